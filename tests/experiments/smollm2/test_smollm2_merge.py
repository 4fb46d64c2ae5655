"""The SmolLM2 merging pipeline's searches (on a toy scorer) and its merged model in transformers.

The searches run on recipes of two small random seed vectors with a cheap score
function, so they are checked for the budget, resumption from the memo and
MAP-Elites' cells without a language model. The transformers check uses the
pipeline's own M2N2 merge when a run left one in ``runs/smollm2-merge`` (or
``$M2N2_SMOL_RUN``), else a tiny random Llama saved the same way.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm import recipes
from m2n2_jax.algorithm.flatten import VectorLayout
from experiments.smollm2 import search

D, NUM_MATH, NUM_AGENT = 64, 4, 3


def toy(memo_path=None):
    rng = np.random.default_rng(0)
    seeds = rng.normal(size=(2, D)).astype(np.float32)
    directions = rng.normal(size=(NUM_MATH + NUM_AGENT, D)).astype(np.float32)

    def score_params(x):  # math points 0/1, agent points in [0, 1]
        proj = np.asarray(directions @ np.asarray(x))
        return np.concatenate([(proj[:NUM_MATH] > 0).astype(np.float32), 1 / (1 + np.exp(-proj[NUM_MATH:]))])
    bank = recipes.SeedBank.build(seeds, block=16)
    scorer = search.Scorer(bank, VectorLayout.of(jnp.zeros(D)), score_params, search.Memo(memo_path))
    seed_scores = np.stack([score_params(s) for s in seeds])
    return scorer, seed_scores


@pytest.mark.parametrize("method", ["m2n2", "m2n2-no-split-point", "map-elites-4x4"])
def test_search_uses_its_budget_and_resumes_from_the_memo(tmp_path, method):
    memo = str(tmp_path / "memo.json")

    def run(scorer, seed_scores):
        if method == "map-elites-4x4":
            return search.run_map_elites(scorer, seed_scores, NUM_MATH, 12, 3, 0)
        return search.run_m2n2(method, scorer, seed_scores, 12, 3, 15, 0)

    scorer, seed_scores = toy(memo)
    recipe, scores, curve, info = run(scorer, seed_scores)
    assert scorer.evaluations == 12 and curve[-1][0] == 12 and len(curve) == 12
    assert 0 < scorer.fresh <= 12
    # the best recipe's scores are what the score function gives for its dense vector
    np.testing.assert_allclose(scores, scorer.score_params(scorer.bank.materialise(recipe)), rtol=1e-5, atol=1e-6)
    again, seed_scores = toy(memo)  # a restarted run: every child comes from the memo
    recipe2, scores2, curve2, _ = run(again, seed_scores)
    assert again.fresh == 0 and again.evaluations == 12
    np.testing.assert_array_equal(recipe.bounds, recipe2.bounds)
    np.testing.assert_array_equal(recipe.coeffs, recipe2.coeffs)
    assert curve == curve2


def test_map_elites_cells_follow_the_two_task_scores():
    scores = np.array([1, 1, 0, 0, 0.9, 0.95, 1.0])  # math 0.5 -> bin 2; agent mean 0.95 -> bin 3
    assert search.cell_of(scores, NUM_MATH) == (2, 3)
    assert search.cell_of(np.ones(7), NUM_MATH) == (3, 3)  # 1.0 stays on the grid
    assert search.cell_of(np.zeros(7), NUM_MATH) == (0, 0)


def test_warmup_children_are_slerps_of_the_two_seeds():
    scorer, _ = toy()
    from m2n2_jax.methods.registry import method_config

    child = recipes.random_slerp(method_config("m2n2", mutation_std=0.0), jax.random.PRNGKey(1), scorer.bank)
    assert child.coeffs.shape == (2, 2) and 0 < child.bounds[1] < D  # two segments around a split point
    assert np.all(child.coeffs > 0)  # each segment mixes both seeds


# ---------------------------------------------------------------- transformers loads the merge

def transformers_math(directory, problems, max_new_tokens):
    """Greedy replies of transformers to the chat prompts, answers extracted as the pipeline does."""
    import torch
    import transformers
    from experiments.smollm2 import evaluate, word_problems

    m = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(directory, "tokenizer.json"))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    texts = []
    for p in problems:
        ids = tok(evaluate.format_prompt("math", p.prompt), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            new = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=end, pad_token_id=end)[0, ids.shape[1]:].tolist()
        texts.append(tok.decode([t for t in new if t != end]))
    return texts, word_problems.math_scores(problems, texts)


def _pipeline_run():
    run = os.environ.get("M2N2_SMOL_RUN", os.path.join("runs", "smollm2-merge"))
    merged, ev = os.path.join(run, "m2n2-merged"), os.path.join(run, "evals", "m2n2 s0.json")
    return (merged, ev) if os.path.isfile(os.path.join(merged, "model.safetensors")) and os.path.isfile(ev) else None


def test_merged_directory_gives_the_measured_math_accuracy_in_transformers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from experiments.smollm2 import evaluate
    from m2n2_jax.llm import checkpoint, model
    from m2n2_jax.llm.config import LlamaConfig

    problems = evaluate.math_problems("test", 0, limit=6)
    found = _pipeline_run()
    if found is not None:  # the pipeline's own merge and its measured per-problem scores
        directory, ev = found
        with open(ev) as f:
            measured = json.load(f)
        want_scores = np.asarray(measured["math_scores"][:len(problems)])
        _, scores = transformers_math(directory, problems, evaluate.MAX_NEW_TOKENS["math"])
        np.testing.assert_array_equal(scores, want_scores)
        return
    # no cached run: a tiny random Llama with a byte-level tokenizer, written by checkpoint.save
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from m2n2_jax.llm.gguf_file import _byte_alphabet
    from m2n2_jax.llm.hf_tokenizer import load_hf_tokenizer

    alphabet = _byte_alphabet()
    tok = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")])
    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    params = jax.tree.map(lambda x: x * 4 if x.ndim == 2 else x, model.init_params(config, seed=1))
    directory = str(tmp_path / "merged")
    checkpoint.save(directory, config, params)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": 257, "pad_token_id": 257}, f)
    ours = evaluate.evaluate_math(config, params, load_hf_tokenizer(directory), problems, max_new_tokens=12)
    texts, scores = transformers_math(directory, problems, 12)
    assert texts == ours["texts"]  # the same greedy replies, so the same extracted answers
    np.testing.assert_array_equal(scores, ours["scores"])


def test_pipeline_ties_tensor_by_tensor_equals_the_library_on_the_whole_vector():
    """The pipeline runs TIES one tensor at a time (memory); per-tensor semantics make that the same merge."""
    from experiments.smollm2 import pipeline
    from m2n2_jax.methods import classic_merges

    rng = np.random.default_rng(0)
    ids = jnp.asarray(np.repeat(np.arange(3), [5, 12, 7]))
    base = jnp.asarray(rng.normal(size=24), jnp.float32)
    seeds = jnp.asarray(rng.normal(size=(2, 24)), jnp.float32)
    got, info = pipeline.classic_merge("ties", base, seeds, ids, pipeline.Settings())
    want = classic_merges.ties(base, seeds, ids, density=0.5, weights=[1, 1])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert info["density"] == 0.5


def test_fitness_agreement_matches_scipy_correlations():
    from scipy import stats
    from experiments.smollm2 import report

    rng = np.random.default_rng(0)
    names = ["base", "math specialist", "agent specialist"] + [f"m{i}" for i in range(5)]
    rows = {n: {"fitness_math": float(rng.random()), "math_accuracy": float(rng.random()),
                "fitness_agent": float(rng.random()), "agent_reward": float(rng.random())} for n in names}
    rows["m0"]["fitness_math"] = rows["m1"]["fitness_math"] = rows["base"]["fitness_math"]  # ties, as in real runs
    for r in rows.values():
        r["fitness_mean"] = (r["fitness_math"] + r["fitness_agent"]) / 2
        r["average"] = (r["math_accuracy"] + r["agent_reward"]) / 2
    got = report.fitness_agreement(rows)
    assert got["models"] == len(names)
    for task, (f, h) in {"math": ("fitness_math", "math_accuracy"), "agent": ("fitness_agent", "agent_reward"),
                         "average": ("fitness_mean", "average")}.items():
        a, b = [rows[n][f] for n in names], [rows[n][h] for n in names]
        assert got[task]["pearson"] == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
        assert got[task]["spearman"] == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    merges = names[3:]
    for n in names:
        rows[n]["kind"] = "seed" if n not in merges else "search"
    only = report.fitness_agreement(rows)["merges_only"]
    a, b = [rows[n]["fitness_agent"] for n in merges], [rows[n]["agent_reward"] for n in merges]
    assert only["models"] == 5 and only["agent"]["spearman"] == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    m, ag = rows["math specialist"], rows["agent specialist"]
    want = (m["fitness_math"] > ag["fitness_math"]) == (m["math_accuracy"] > ag["math_accuracy"])
    assert got["seeds_ordered_alike"]["math"] == want
    flat = {n: {**r, "fitness_agent": 0.5} for n, r in rows.items()}  # a constant column: no correlation, no crash
    assert report.fitness_agreement(flat)["agent"] is None


def _var(xs):
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def test_paired_gap_averages_seeds_per_item_against_a_plain_loop():
    from experiments.smollm2 import report

    rng = np.random.default_rng(1)
    a = {"math": rng.integers(0, 2, (3, 20)).astype(float), "agent": rng.choice([0.0, 0.5, 1.0], (3, 10))}
    b = {"math": rng.integers(0, 2, (1, 20)).astype(float), "agent": rng.choice([0.0, 0.5, 1.0], (1, 10))}
    got = report.paired_gap(a, b)
    dm = [sum(a["math"][s][i] for s in range(3)) / 3 - b["math"][0][i] for i in range(20)]
    da = [sum(a["agent"][s][i] for s in range(3)) / 3 - b["agent"][0][i] for i in range(10)]
    assert got["gap"] == pytest.approx((sum(dm) / 20 + sum(da) / 10) / 2)
    assert got["se_items"] == pytest.approx((_var(dm) / 20 + _var(da) / 10) ** 0.5 / 2)
    assert got["sd_math_diff"] == pytest.approx(_var(dm) ** 0.5)


def test_bootstrap_interval_is_zero_for_equal_methods_and_matches_the_paired_se_without_seed_noise():
    from experiments.smollm2 import report

    rng = np.random.default_rng(2)
    a = {"math": rng.integers(0, 2, (1, 400)).astype(float), "agent": rng.random((1, 300))}
    assert report.bootstrap_gap(a, a, reps=200) == (0.0, 0.0)
    b = {"math": rng.integers(0, 2, (1, 400)).astype(float), "agent": rng.random((1, 300))}
    low, high = report.bootstrap_gap(a, b, reps=2000)
    gap = report.paired_gap(a, b)
    assert low < gap["gap"] < high
    assert (high - low) / 2 == pytest.approx(report.Z95 * gap["se_items"], rel=0.15)
    # seed noise widens it: three seeds of b whose agent rewards differ by a constant (same seed mean)
    b3 = {"math": np.repeat(b["math"], 3, 0), "agent": b["agent"] + np.array([[-0.3], [0.0], [0.3]])}
    assert report.paired_gap(a, b3)["gap"] == pytest.approx(gap["gap"])
    low3, high3 = report.bootstrap_gap(a, b3, reps=2000)
    assert high3 - low3 > 1.5 * (high - low)


def test_sizes_give_the_half_width_they_promise():
    from experiments.smollm2 import report

    n = report.items_needed(0.32, 0.28)
    assert report.half_width(0.32, 0.28, n, n) <= 0.05 < report.half_width(0.32, 0.28, n - 1, n - 1)
    assert report.half_width(0.32, 0.28, 100, 80) < 0.05  # the defaults


def test_scorer_keeps_the_best_children_as_a_full_sort_would():
    scorer, _ = toy()
    scorer.keep = 3
    rng = np.random.default_rng(3)
    seen = []
    for i in range(12):
        x = rng.normal(size=D).astype(np.float32)
        seen.append((float(np.mean(scorer.score_vector(x))), -i, search.vector_key(x)))
    scorer.score_vector(x)  # a repeat is not a second candidate
    want = [k for _, _, k in sorted(seen, reverse=True)[:3]]
    assert [k for k, _, _ in scorer.candidates()] == want
    # pick: the best on the selection scores, ties to the earlier candidate
    selection, _ = toy()
    selection.score_params = lambda x: np.full(NUM_MATH + NUM_AGENT, 0.5, np.float32)
    chosen, means = search.pick(scorer.candidates(), selection)
    assert chosen == 0 and means == [0.5] * 3
    selection.score_params = lambda x: np.full(NUM_MATH + NUM_AGENT, float(x[0]), np.float32)
    selection.memo = search.Memo(None)
    chosen, means = search.pick(scorer.candidates(), selection)
    assert chosen == int(np.argmax(means)) and means == pytest.approx([float(c[1][0]) for c in scorer.candidates()], rel=1e-6)


def test_provenance_is_the_per_layer_mean_of_a_plain_per_coordinate_loop():
    from experiments.smollm2 import pipeline

    groups = np.repeat([3, 0, 1, 2, 4], [5, 7, 6, 9, 4])  # embedding (3 = L), layers 0-2, final norm (4)
    recipe = recipes.Recipe(np.array([0, 4, 15, 31]), np.array([[1.0, 0.0], [0.2, 0.6], [0.0, 2.0]]))
    got = pipeline.provenance(recipe, groups, num_layers=3)
    share = np.empty(len(groups))
    for seg in range(3):
        for i in range(recipe.bounds[seg], recipe.bounds[seg + 1]):
            share[i] = recipe.coeffs[seg, 0] / recipe.coeffs[seg].sum()
    want = [share[groups == g].mean() for g in (3, 0, 1, 2, 4)]
    np.testing.assert_allclose(got["math_share"], want, rtol=1e-12)
    assert got["layers"] == ["embedding", "layer 0", "layer 1", "layer 2", "final norm / head"]


def test_report_from_rows_and_evals(tmp_path):
    """The report from a run directory: seed means, M2N2-minus rows, sizes, and the three plots."""
    from experiments.smollm2 import report

    rng = np.random.default_rng(4)
    out = tmp_path / "run"
    (out / "rows").mkdir(parents=True)
    (out / "evals").mkdir()
    order = [report.search_row_name(m, k) for k in range(2) for m in ("m2n2", "ga")] + ["linear"]
    for name in list(report.SEEDS) + order:
        math, agent = rng.integers(0, 2, 30).astype(float), rng.random(20)
        method, kind = (name.split(" s")[0], "search") if name in order[:4] else (name, "seed")
        row = {"kind": kind if name != "linear" else "classic", "math_accuracy": math.mean(),
               "agent_reward": agent.mean(), "agent_success": 0.0, "average": (math.mean() + agent.mean()) / 2,
               "fitness_math": rng.random(), "fitness_agent": rng.random(), "fitness_mean": 0.5,
               "selection_mean": 0.4, "wall_seconds": 10.0, "peak_rss_mb": 100.0}
        if kind == "search":
            row.update(method=method, search_seed=int(name[-1]), curve=[[1, 0.1], [2, 0.3]], inserted=2,
                       provenance={"layers": ["embedding", "layer 0"], "math_share": [0.3, 0.7]})
        json.dump(row, open(out / "rows" / f"{name}.json", "w"))
        json.dump({"math_scores": math.tolist(), "agent_rewards": agent.tolist()}, open(out / "evals" / f"{name}.json", "w"))
    run = {"command": "x", "settings": {"math_test": 30, "agent_test": 20, "budget": 2, "warmup": 0,
                                        "candidates": 1, "selection_items": 2},
           "fitness": {"math_problems": 2, "agent_goals": 2, "agent_steps": 8}, "row_order": order, "num_params": 10,
           "seconds": 60.0, "environment": {"cpu": "test"},
           "seven_b": {"135m_seconds_per_child_measured_cpu": None, "fitness_tokens_per_child": 5,
                       "135m_flops_per_child": 1e9, "7b_flops_per_child": 1e12,
                       "7b_seconds_per_child_h100_at_40pct": 0.1, "7b_recipe_archive_gib": 1.0,
                       "7b_dense_archive_15_gib": 5.0}}
    json.dump(run, open(out / "run.json", "w"))
    results = report.report(str(out))
    m = results["methods_summary"]["m2n2"]
    rows = results["rows"]
    assert m["seeds"] == [0, 1]
    assert m["average"][0] == pytest.approx((rows["m2n2 s0"]["average"] + rows["m2n2 s1"]["average"]) / 2)
    assert m["average"][1] == pytest.approx(abs(rows["m2n2 s0"]["average"] - rows["m2n2 s1"]["average"]) / 2)
    assert set(results["m2n2_minus"]) == {"ga"}
    table = (out / "table.md").read_text()
    for heading in ("Search methods", "M2N2 minus", "Sizes", "Scale"):
        assert heading in table
    for png in ("merge.png", "curves.png", "provenance.png"):
        assert (out / png).stat().st_size > 1000

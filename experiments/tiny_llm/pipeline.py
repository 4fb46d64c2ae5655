"""The LLM merging experiment: make data, train a base and two specialists,
merge them with M2N2 (recipe archive) and the classic baselines, evaluate.

Imperative shell over :mod:`experiments.tiny_llm.toy_tasks`, :mod:`m2n2_jax.llm`,
:mod:`m2n2_jax.methods.classic_merges` and :mod:`m2n2_jax.algorithm.recipes`. Every step prints its
progress; trained models are cached as HF checkpoints under ``--models``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover
from m2n2_jax.methods import classic_merges as merging
from m2n2_jax.methods import layer_cma
from m2n2_jax.algorithm import recipes
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.search import ENGINE, Scorer, run_search
from m2n2_jax.methods.registry import method_config
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.io.results import environment, write_json
from m2n2_jax.llm import checkpoint
from m2n2_jax.llm import data
from m2n2_jax.llm import generate
from m2n2_jax.llm import model
from m2n2_jax.llm.config import LlamaConfig
from m2n2_jax.llm.word_tokenizer import WordTokenizer
from experiments.methods import PAPER_ABLATIONS
from experiments.tiny_llm import toy_tasks, train

TASKS = ("math", "agent")
M2N2_METHODS = PAPER_ABLATIONS


@dataclasses.dataclass(frozen=True)
class Settings:
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    seq_len: int = 36
    train_examples: int = 6000
    test_examples: int = 300
    fitness_examples: int = 60   # per task, drawn from the training split
    base_steps: int = 1000       # a generalist: both tasks, answers included, under-trained
    math_steps: int = 500
    agent_steps: int = 1000
    learning_rate: float = 3e-3  # pre-training
    finetune_learning_rate: float = 5e-4
    replay_weight: float = 0.0   # > 0: fine-tuning also replays the base's data (less forgetting)
    batch_size: int = 64
    budget: int = 1000           # forward passes for M2N2, its ablations and CMA-ES
    children_per_step: int = 4
    seed: int = 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def llama_config(s: Settings, tokenizer: WordTokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer.vocab), hidden_size=s.hidden_size,
                       intermediate_size=s.intermediate_size, num_hidden_layers=s.num_hidden_layers,
                       num_attention_heads=s.num_attention_heads, num_key_value_heads=s.num_key_value_heads,
                       rope_theta=s.rope_theta, max_position_embeddings=s.seq_len)


def make_data(s: Settings, tokenizer: WordTokenizer) -> dict:
    splits = {t: toy_tasks.make_splits(t, s.train_examples, s.test_examples, s.seed + 1 + i) for i, t in enumerate(TASKS)}
    enc = lambda ex: data.encode(tokenizer, ex, s.seq_len)
    fitness = [ex for t in TASKS for ex in splits[t]["train"][:s.fitness_examples]]
    return {"splits": splits,
            "pretrain": enc(splits["math"]["train"] + splits["agent"]["train"]),
            "train": {t: enc(splits[t]["train"]) for t in TASKS},
            "test": {t: enc(splits[t]["test"]) for t in TASKS},
            "fitness": enc(fitness)}


def trained(path: str, config, tokenizer, make, retrain: bool):
    """Load the HF checkpoint at ``path`` if present (and same shape), else train and save it."""
    if not retrain and os.path.exists(os.path.join(path, "config.json")):
        cached_config, params = checkpoint.load(path)
        if cached_config == config:
            log(f"loaded {path}")
            return params
    params = make()
    checkpoint.save(path, config, params)
    tokenizer.save(path)
    return params


def write_merge_data(models_dir: str, d: dict, s: Settings) -> dict:
    """fitness.jsonl (the search's examples) and test.jsonl (held out, both tasks) for ``m2n2 merge``."""
    files = {"fitness": [ex for t in TASKS for ex in d["splits"][t]["train"][:s.fitness_examples]],
             "test": [ex for t in TASKS for ex in d["splits"][t]["test"]]}
    paths = {}
    for name, rows in files.items():
        paths[name] = os.path.join(models_dir, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows)
    return paths


def run(s: Settings, out: str, models_dir: str, retrain: bool = False,
        command: str = "python -m experiments.tiny_llm.merge --out docs/results/llm-merge", models_only: bool = False) -> dict:
    t_start = time.time()
    tokenizer = toy_tasks.make_tokenizer()
    config = llama_config(s, tokenizer)
    log("making data")
    d = make_data(s, tokenizer)
    score_batch = jax.jit(lambda p, tokens, targets: generate.answer_scores(config, p, tokens, targets)[0])

    def accuracy(params, task):
        b = d["test"][task]
        return float(jnp.mean(score_batch(params, b.tokens, b.targets)))

    init = model.init_params(config, s.seed)
    log(f"model: {model.num_params(init):,} parameters; pre-training the base on both tasks ({s.base_steps} steps)")
    base = trained(os.path.join(models_dir, "base"), config, tokenizer,
                   lambda: train.train(config, init, d["pretrain"], s.base_steps, s.seed, s.batch_size,
                                       s.learning_rate, lm_weight=1.0, log=log, log_every=100), retrain)
    log(f"base: math {accuracy(base, 'math'):.3f}, agent {accuracy(base, 'agent'):.3f}")
    specialists = {}
    for i, task in enumerate(TASKS):
        steps = s.math_steps if task == "math" else s.agent_steps
        log(f"fine-tuning the {task} specialist ({steps} steps)")
        specialists[task] = trained(os.path.join(models_dir, task), config, tokenizer,
                                    lambda: train.train(config, base, d["train"][task], steps,
                                                        s.seed + 1 + i, s.batch_size, s.finetune_learning_rate, log=log,
                                                        log_every=250, replay=d["pretrain"],
                                                        replay_weight=s.replay_weight),
                                    retrain)
        log(f"{task} specialist: math {accuracy(specialists[task], 'math'):.3f}, "
            f"agent {accuracy(specialists[task], 'agent'):.3f}")

    if models_only:
        paths = write_merge_data(models_dir, d, s)
        log(f"wrote {paths['fitness']} and {paths['test']}; merge the specialists with:\n  m2n2 merge "
            f"{os.path.join(models_dir, 'math')} {os.path.join(models_dir, 'agent')} --task llm-exact-match "
            f"--task-arg data={paths['fitness']} --task-arg test_data={paths['test']} --batch {s.children_per_step} "
            f"--forward-passes {s.budget} --seed {s.seed}")
        return {"models": models_dir, **paths}

    layout = VectorLayout.of(base, order=model.checkpoint_order(base))
    base_vec = layout.ravel(base)
    seeds = jnp.stack([layout.ravel(specialists[t]) for t in TASKS])
    fit = d["fitness"]
    score_vector = jax.jit(lambda x: score_batch(layout.unravel(x), fit.tokens, fit.targets))
    likelihood_vector = jax.jit(lambda x: generate.answer_scores(config, layout.unravel(x), fit.tokens, fit.targets)[1])

    def fitness(x):
        return float(jnp.mean(score_vector(x)))

    def best_of(candidates):
        """(name, vector) with the highest mean fitness-set score."""
        return max(candidates, key=lambda c: fitness(c[1]))

    rows = {}

    def report(name, vector, **info):
        params = layout.unravel(vector)
        row = {"math": accuracy(params, "math"), "agent": accuracy(params, "agent"), "fitness": fitness(vector), **info}
        row["average"] = (row["math"] + row["agent"]) / 2
        rows[name] = row
        log(f"{name:24s} math {row['math']:.3f}  agent {row['agent']:.3f}  average {row['average']:.3f}  "
            f"(train-subset fitness {row['fitness']:.3f})")

    log("evaluating baselines")
    report("base", base_vec)
    report("math specialist", seeds[0])
    report("agent specialist", seeds[1])
    report("linear average", merging.linear(seeds, [0.5, 0.5]))
    ratios = np.linspace(0, 1, 21)
    t, v = best_of([(float(r), crossover.slerp(seeds[0], seeds[1], float(r))) for r in ratios])
    report("SLERP (best ratio)", v, ratio=t)
    tensor_ids = merging.leaf_groups(layout)
    scales = [0.5, 0.75, 1.0, 1.25]
    t, v = best_of([(sc, merging.task_arithmetic(base_vec, seeds, sc, weights=[1, 1])) for sc in scales])
    report("task arithmetic", v, scale=t)
    t, v = best_of([((dens, sc), merging.ties(base_vec, seeds, tensor_ids, density=dens, scale=sc, weights=[1, 1]))
                    for dens in (0.2, 0.5) for sc in scales])
    report("TIES (mergekit, per tensor)", v, density=t[0], scale=t[1])
    masks = merging.dare_keep_masks(jax.random.PRNGKey(s.seed), 2, layout.size, 0.5)
    t, v = best_of([(sc, merging.dare_linear(base_vec, seeds, tensor_ids, masks, scale=sc, weights=[1, 1])) for sc in scales])
    report("DARE linear (density 0.5, L1 rescale)", v, scale=t)
    log(f"CMA-ES over per-tensor merge coefficients ({s.budget} forward passes)")
    v, curve = cma_es_merge(base_vec, seeds, tensor_ids, score_vector, s.budget, s.seed)
    report("CMA-ES (per-tensor)", v, curve=curve)

    memory = None
    bank = recipes.SeedBank.build(np.asarray(seeds))
    for method, scores in [(m, "exact match") for m in M2N2_METHODS] + [("m2n2", "likelihood")]:
        name = method if scores == "exact match" else f"{method} (likelihood fitness)"
        log(f"{name}: recipe archive, no mutation, {s.budget} forward passes")
        config_m = method_config(method, mutation_std=0.0, children_per_step=s.children_per_step)
        config_m = config_m.replace(capacity_rule="archive-max" if scores == "likelihood" else "fixed")
        archive, curve = m2n2_merge(config_m, bank, score_vector if scores == "exact match" else likelihood_vector,
                                    s.budget, s.seed)
        best = archive.recipes[archive.best_index]
        report(name, jnp.asarray(bank.materialise(best)), curve=curve, inserted=archive.inserted,
               segments=best.num_segments)
        if name == "m2n2":
            memory = recipes.archive_memory(bank, archive)
            merged = layout.unravel(jnp.asarray(bank.materialise(best)))

    log("saving the M2N2 merge as a HF checkpoint and reloading it")
    merged_dir = os.path.join(models_dir, "m2n2-merged")
    checkpoint.save(merged_dir, config, merged)
    tokenizer.save(merged_dir)
    _, reloaded = checkpoint.load(merged_dir)
    probe = d["test"]["math"].tokens[:32]
    logits_equal = bool(jnp.array_equal(model.apply(config, merged, probe), model.apply(config, reloaded, probe)))
    greedy = {t: greedy_accuracy(config, reloaded, d["test"][t], tokenizer) for t in TASKS}
    log(f"reloaded logits identical: {logits_equal}; greedy-decoding accuracy of the reloaded merge: "
        f"math {greedy['math']:.3f}, agent {greedy['agent']:.3f}")

    results = {"command": command, "settings": dataclasses.asdict(s), "num_params": layout.size, "methods": rows,
               "memory": {**memory, **seven_b_arithmetic()}, "checkpoint_round_trip_logits_identical": logits_equal,
               "greedy_accuracy_of_reloaded_m2n2_merge": greedy, "seconds": time.time() - t_start,
               "environment": environment()}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results.json"), results)
    write_table(os.path.join(out, "table.md"), results)
    plot(os.path.join(out, "merge.png"), rows)
    log(f"done in {time.time() - t_start:.0f} s; wrote {out}/results.json, table.md, merge.png")
    return results


def greedy_accuracy(config, params, batch, tokenizer) -> float:
    """Exact match of greedy decoding (up to 3 new tokens) on a test batch."""
    tokens = np.where(np.arange(batch.tokens.shape[1])[None] < batch.prompt_lengths[:, None], batch.tokens, 0)
    tokens = np.pad(tokens, ((0, 0), (0, 3)))
    out = np.asarray(jax.jit(lambda t, l: greedy_generate(config, params, t, l, 3, tokenizer.eos_id))(
        tokens, batch.prompt_lengths))
    right = 0
    for row, gold_row, mask in zip(out, batch.tokens, batch.targets):
        right += tokenizer.decode(row) == tokenizer.decode(gold_row[mask > 0])
    return right / len(out)


def greedy_generate(config, params, tokens, prompt_lengths, max_new_tokens: int, eos_id: int, pad_id: int = 0):
    """Greedy continuations [B, max_new_tokens] of the prompts (pad after <eos>), jit-friendly, without a cache.

    This experiment's own decoding (a fixed right-padded buffer, the model re-run each step), kept so that its
    figures stay as committed; the library decodes with a key/value cache (:func:`m2n2_jax.llm.generate.greedy`).

    tokens [B, L] hold the prompts right-padded; L must leave room for
    max_new_tokens after the longest prompt.
    """
    tokens = jnp.asarray(tokens)
    prompt_lengths = jnp.asarray(prompt_lengths)
    rows = jnp.arange(tokens.shape[0])
    positions = jnp.arange(tokens.shape[1])
    buffer = jnp.where(positions[None] < prompt_lengths[:, None], tokens, pad_id)

    def step(carry, i):
        buffer, done = carry
        logits = model.apply(config, params, buffer)
        at = prompt_lengths - 1 + i
        token = jnp.argmax(logits[rows, at], axis=-1).astype(buffer.dtype)
        token = jnp.where(done, pad_id, token)
        buffer = buffer.at[rows, jnp.minimum(at + 1, buffer.shape[1] - 1)].set(token)
        return (buffer, done | (token == eos_id)), token

    (_, _), new = jax.lax.scan(step, (buffer, jnp.zeros(tokens.shape[0], bool)), jnp.arange(max_new_tokens))
    return new.T


@dataclasses.dataclass(frozen=True, eq=False)
class _CurvedRecipeM2N2(recipes.RecipeM2N2):
    """The recipe archive, logging this experiment's curve value: the highest mean score of any slot."""

    def logged(self, state) -> dict:
        return {"max_mean_score": float(jnp.max(jnp.mean(state.scores, axis=1)))}


def m2n2_merge(config, bank, score_vector, budget: int, seed: int):
    """An M2N2 run over recipes (through the one search loop, one log per step); returns the
    archive and (forward passes, best mean score) points.

    With continuous scores (likelihood) the config's capacity rule is "archive-max": c_j is then
    the best score any archive member reaches on datapoint j.
    """
    # a fresh array per child: JAX may still read a numpy array after jnp.asarray returns (an asynchronous
    # transfer), so one buffer rewritten for the next child made scores differ from run to run
    scorer = Scorer(lambda recipe: score_vector(jnp.asarray(bank.materialise(recipe))), jittable=False)
    strategy = _CurvedRecipeM2N2(config, bank)
    batch = config.children_per_step
    steps = -(-budget // batch)  # whole steps until the budget is reached
    out = run_search(strategy, None, scorer, [seed], strategy.seeds(), plan_budget(steps * batch, batch, batch),
                     keys=ENGINE)
    curve = [(fp, float(v)) for fp, v in zip(out.forward_passes[1:], out.metrics["max_mean_score"][0, 1:])]
    return out.runs.state[0], curve


def cma_es_merge(base, seeds, groups, score_vector, budget: int, seed: int):
    """CMA-ES (evosax) over [G, K] task-arithmetic coefficients; the best merge seen and its curve."""
    result = layer_cma.cma_es_task_arithmetic(base, seeds, groups, score_vector, budget, seed)
    return result.vector, result.curve


def seven_b_arithmetic(num_params: float = 6.74e9, bytes_per_param: int = 2, seeds: int = 2, members: int = 20) -> dict:
    """Archive memory for Llama-2-7B in bfloat16: dense members against recipes."""
    gib = num_params * bytes_per_param / 2 ** 30
    return {"7b_model_gib": gib, "7b_dense_archive_gib": members * gib,
            "7b_recipe_archive_gib": (seeds + 1) * gib, "7b_recipe_archive_with_two_working_copies_gib": (seeds + 2) * gib}


def write_table(path: str, results: dict) -> None:
    rows = results["methods"]
    mem = results["memory"]
    lines = ["# Merging a math and an agent specialist (tiny Llama, CPU)", "",
             "Command (regenerates this directory; about 15-25 minutes on a 2-core CPU):", "",
             f"    {results['command']}", "",
             f"Model: {results['num_params']:,} parameters (Llama architecture). Held-out exact-match accuracy "
             f"({results['settings']['test_examples']} problems per task); fitness = exact match on "
             f"{results['settings']['fitness_examples']} training problems per task; "
             f"M2N2, ablations and CMA-ES get {results['settings']['budget']} forward passes each.", "",
             "| method | math | agent | average | train-subset fitness |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['math']:.3f} | {r['agent']:.3f} | {r['average']:.3f} | {r['fitness']:.3f} |")
    lines += ["", "## Archive memory (20 members)", "",
              f"- dense: {mem['dense_archive_bytes'] / 2**20:.2f} MiB (20 x {mem['dense_model_bytes'] / 2**20:.3f} MiB)",
              f"- recipes: {mem['recipe_archive_bytes'] / 2**20:.2f} MiB = {mem['recipe_archive_in_dense_models']:.3f} "
              f"dense models (2 seeds {mem['seed_bytes'] / 2**20:.2f} MiB, one working copy, prefix Grams "
              f"{mem['prefix_gram_bytes']} B, recipes {mem['recipe_bytes']} B, longest recipe {mem['max_segments']} segments)",
              f"- Llama-2-7B in bfloat16: one model {mem['7b_model_gib']:.1f} GiB; 20 dense members "
              f"{mem['7b_dense_archive_gib']:.0f} GiB; recipes: 2 seeds + 1 working copy "
              f"{mem['7b_recipe_archive_gib']:.1f} GiB (+1 more copy: {mem['7b_recipe_archive_with_two_working_copies_gib']:.1f} GiB)",
              "", f"HF checkpoint of the M2N2 merge reloads with identical logits: "
              f"{results['checkpoint_round_trip_logits_identical']}."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(path: str, rows: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.2, [rows[n]["math"] for n in names], 0.4, label="math")
    ax.bar(x + 0.2, [rows[n]["agent"] for n in names], 0.4, label="agent")
    ax.set_xticks(x, names, rotation=40, ha="right")
    ax.set_ylabel("held-out exact match")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""One command for the SmolLM2 merging experiment: import, fine-tune, evaluate, merge, report.

    python -m experiments.smollm2.merge --out runs/smollm2-merge

1. the base SmolLM2-135M-Instruct from its GGUF file;
2. the math and agent specialists (full fine-tunes, cached under runs/cache/smollm2);
3. held-out evaluation of base and seeds (greedy decoding with the KV cache:
   math accuracy on test problems, agent reward and success over test episodes);
4. every method on the same budget of fitness evaluations (a merged model scored on
   the fitness datapoints is one): M2N2 (recipe archive, no mutation, archive 15, a
   warm-up of random SLERP merges of the seeds), its ablations without attraction
   and without split point, GA, MAP-Elites 4 x 4 and CMA-ES over per-layer SLERP
   coefficients; the classic merges (mergekit semantics) take no search;
5. held-out evaluation of every result; table.md, results.json, merge.png and the
   best M2N2 merge as a Hugging Face directory (``m2n2-merged``).

Fitness datapoints: the first math fitness problems (1 when teacher forcing
reproduces the whole worked solution and the end token) and the first agent
fitness goals (score = the fraction of the expert's steps whose action teacher
forcing reproduces exactly: continuous in [0, 1], so capacities follow the
archive maximum, the paper's rule). A killed run resumes: every finished method's
row is in ``DIR/rows/``, every held-out evaluation in ``DIR/evals/``, and every
scored child in ``DIR/memo/`` (a search re-proposes the same children, and finds
their scores there).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.errors import ConfigError
from m2n2_jax.io.results import environment
from experiments.methods import PAPER_ABLATIONS
from experiments.smollm2 import evaluate, search, shop, specialists
from experiments.smollm2.specialists import GGUF, log
from m2n2_jax.llm import checkpoint, model
from m2n2_jax.methods import classic_merges, layer_cma
from m2n2_jax.methods.registry import get, names

# The M2N2 family comes from the method registry; the 4 x 4 MAP-Elites over (math, agent) fitness and the
# per-layer SLERP CMA-ES are this pipeline's own searches (the registry's map-elites is the digits grid).
SEARCHES = PAPER_ABLATIONS + ("map-elites-4x4", "cma-es-layers")
CLASSIC = ("linear", "slerp", "task-arithmetic", "ties", "dare-linear", "dare-ties", "model-stock")
PAPER_BUDGET = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    budget: int = 20            # fitness evaluations per search method
    warmup: int = 5             # random SLERP merges of the seeds first (paper: at most 50)
    archive_size: int = 15
    cma_population: int = 8     # paper: 25 (too many generations' worth for a CPU budget)
    math_fitness: int = 16      # fitness datapoints: math problems ...
    agent_fitness: int = 8      # ... and agent goals (each scored over its expert steps)
    math_test: int = 200
    agent_test: int = 100
    eval_batch: int = 32
    density: float = 0.5        # TIES / DARE density (mergekit's examples; not tuned here)
    seed: int = 0

    def __post_init__(self):
        if self.budget < 1 or self.warmup < 0 or self.warmup > self.budget:
            raise ConfigError(f"the budget must be >= 1 and the warm-up between 0 and the budget "
                              f"(got budget {self.budget}, warm-up {self.warmup}).")


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux), so each method's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- fitness


def fitness_scorer(config, tokenizer, s: Settings):
    """(score(params) -> [N] scores, N math datapoints, info): math problems then agent goals."""
    math_batch = evaluate.fitness_batch(tokenizer, "math", "fitness", s.seed, limit=s.math_fitness)
    goals = evaluate.shop_goals("fitness", s.seed, limit=s.agent_fitness)
    steps = [len(shop.expert_episode(evaluate.catalogue(s.seed), g)) for g in goals]
    agent_batch = evaluate.fitness_batch(tokenizer, "agent", "fitness", s.seed, limit=s.agent_fitness)
    if sum(steps) != len(agent_batch):
        raise ConfigError(f"the agent fitness batch has {len(agent_batch)} rows but the goals' expert episodes "
                          f"have {sum(steps)} steps; evaluate.training_pairs and shop.expert_episode disagree.")
    math_fn = evaluate.score_function(config, math_batch, tokenizer.eos_ids, 16)
    agent_fn = evaluate.score_function(config, agent_batch, tokenizer.eos_ids, 16)
    starts = np.concatenate([[0], np.cumsum(steps)[:-1]])

    @jax.jit
    def both(params):
        return math_fn(params), agent_fn(params)

    def score(params):
        m, a = both(params)
        per_goal = np.add.reduceat(np.asarray(a, np.float64), starts) / np.asarray(steps)
        return np.concatenate([np.asarray(m, np.float64), per_goal]).astype(np.float32)
    info = {"math_problems": len(math_batch), "math_tokens_per_row": int(math_batch.tokens.shape[1]),
            "agent_goals": len(goals), "agent_steps": int(sum(steps)),
            "agent_tokens_per_row": int(agent_batch.tokens.shape[1])}
    return score, len(math_batch), info


def split_scores(scores, num_math: int) -> dict:
    scores = np.asarray(scores)
    return {"fitness_math": float(np.mean(scores[:num_math])), "fitness_agent": float(np.mean(scores[num_math:])),
            "fitness_mean": float(np.mean(scores))}


# ---------------------------------------------------------------- held-out evaluation


def vector_key(vector) -> str:
    """A hash of a flat parameter vector (a strided sample and the float64 sum): names identical merges."""
    x = np.asarray(vector, np.float32)
    return hashlib.sha1(x[::101].tobytes() + np.float64(np.sum(x, dtype=np.float64)).tobytes()).hexdigest()[:16]


def held_out(name: str, config, params, tokenizer, s: Settings, out: str, key: str) -> dict:
    """Held-out math accuracy, agent reward and success rate, cached in ``out/evals/by_vector/KEY.json`` (a merge
    identical to one evaluated before, e.g. a search ending at a seed, is not evaluated twice) and copied to
    ``out/evals/NAME.json``."""
    path = os.path.join(out, "evals", "by_vector", f"{key}.json")
    named = os.path.join(out, "evals", f"{name}.json")
    want = {"math_test": s.math_test, "agent_test": s.agent_test, "seed": s.seed}
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("settings") == want:
            with open(named, "w") as f:
                json.dump(cached, f)
            return {**cached, "eval_seconds": 0.0, "same_as": cached.get("first_name")}
    start = time.perf_counter()
    problems = evaluate.math_problems("test", s.seed, limit=s.math_test)
    math = evaluate.evaluate_math(config, params, tokenizer, problems, s.eval_batch)
    goals = evaluate.shop_goals("test", s.seed, limit=s.agent_test)
    agent = evaluate.evaluate_agent(config, params, tokenizer, goals, evaluate.catalogue(s.seed), s.eval_batch)
    row = {"settings": want, "math_accuracy": math["accuracy"], "agent_reward": agent["mean_reward"],
           "agent_success": agent["success_rate"], "math_scores": math["scores"], "math_texts": math["texts"],
           "agent_rewards": agent["rewards"], "agent_actions": agent["actions"],
           "eval_seconds": time.perf_counter() - start, "first_name": name}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for p in (path, named):
        with open(p, "w") as f:
            json.dump(row, f)
    return row


# ---------------------------------------------------------------- the methods


def classic_merge(name: str, base, seeds, tensor_ids, s: Settings):
    """The merge ``name`` with mergekit's semantics (math specialist = seed 0 and SLERP's t = 0 end)."""
    d = s.density
    if name == "linear":
        return classic_merges.linear(seeds, jnp.asarray([0.5, 0.5])), {"weights": [0.5, 0.5]}
    if name == "slerp":
        return classic_merges.slerp(seeds[0], seeds[1], 0.5, tensor_ids), {"t": 0.5}
    if name == "task-arithmetic":
        return classic_merges.task_arithmetic(base, seeds, 1.0, weights=[1, 1]), {"lambda": 1.0, "weights": [1, 1]}
    if name == "ties":  # tensor by tensor: the library's one sort over all 135M coordinates needs > 12 GB
        bounds = np.concatenate([[0], np.cumsum(np.bincount(np.asarray(tensor_ids)))])
        parts = [np.asarray(classic_merges.ties(base[a:b], seeds[:, a:b], jnp.zeros(b - a, jnp.int32), density=d,
                                                weights=[1, 1], num_tensors=1)) for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate(parts), {"density": d, "weights": [1, 1]}
    if name in ("dare-linear", "dare-ties"):
        masks = classic_merges.dare_keep_masks(jax.random.PRNGKey(s.seed), 2, seeds.shape[1], d)
        merge = classic_merges.dare_linear if name == "dare-linear" else classic_merges.dare_ties
        return merge(base, seeds, tensor_ids, masks, weights=[1, 1]), {"density": d, "weights": [1, 1]}
    if name == "model-stock":
        return classic_merges.model_stock(base, seeds, tensor_ids), {}
    raise ConfigError(f"unknown classic merge {name!r}; use one of {', '.join(CLASSIC)}.")


def run_search(name: str, scorer, seed_scores, num_math: int, s: Settings, llama_config, params_like):
    """(flat merged vector, its fitness scores, curve, info) of one search method."""
    bank = scorer.bank
    if name == "map-elites-4x4":
        recipe, scores, curve, info = search.run_map_elites(scorer, seed_scores, num_math, s.budget, s.warmup,
                                                                 s.seed)
    elif name == "cma-es-layers":
        groups = layer_cma.layer_groups(llama_config, scorer.layout)
        tensor_ids = classic_merges.leaf_groups(scorer.layout)
        result = layer_cma.cma_es_layer_slerp(jnp.asarray(bank.seeds), groups, scorer.score_vector, s.budget, s.seed,
                                              tensor_ids=tensor_ids, population=s.cma_population)
        vector = np.asarray(result.vector)
        scorer.progress = None  # the best member again is a memo hit, not an evaluation: not a step of the bar
        scores = scorer.score_vector(vector)
        scorer.evaluations = result.evaluated
        return vector, scores, [list(p) for p in result.curve], {
            "population": s.cma_population, "groups": int(np.asarray(groups).max()) + 1,
            "best_coefficients": [round(float(c), 4) for c in np.ravel(result.coefficients)]}
    else:
        recipe, scores, curve, info = search.run_m2n2(name, scorer, seed_scores, s.budget, s.warmup,
                                                           s.archive_size, s.seed)
    info["recipe"] = {"bounds": recipe.bounds.tolist(), "coeffs": recipe.coeffs.tolist()}
    return bank.materialise(recipe), scores, curve, info


def seven_b_arithmetic(params_135m: int, seconds_per_child_135m: float | None, fitness_tokens: int) -> dict:
    """Llama-2-7B figures next to the measured 135M ones: recipe-archive memory, time per child from FLOPs."""
    p7 = 6.74e9
    gib = p7 * 2 / 2 ** 30  # bfloat16
    flops_per_child = 2 * p7 * fitness_tokens
    h100_bf16 = 989e12 * 0.4  # dense bf16 peak at an assumed 40 % utilisation
    return {"7b_params": p7, "7b_model_gib_bf16": gib, "7b_dense_archive_15_gib": 15 * gib,
            "7b_recipe_archive_gib": 3 * gib,  # 2 seeds + 1 working copy (recipes and prefix Grams: KB)
            "fitness_tokens_per_child": fitness_tokens,
            "7b_flops_per_child": flops_per_child, "7b_seconds_per_child_h100_at_40pct": flops_per_child / h100_bf16,
            "135m_params": params_135m, "135m_flops_per_child": 2 * params_135m * fitness_tokens,
            "135m_seconds_per_child_measured_cpu": seconds_per_child_135m}


# ---------------------------------------------------------------- the pipeline


def run(s: Settings, out: str, gguf: str = GGUF, cache: str = specialists.CACHE, methods=None,
        command: str = "", progress: bool = True, seed_rows: bool = True) -> dict:
    t_start = time.time()
    methods = list(methods or (SEARCHES + CLASSIC))
    unknown = [m for m in methods if m not in SEARCHES + CLASSIC]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(SEARCHES + CLASSIC)}.")
    os.makedirs(os.path.join(out, "rows"), exist_ok=True)
    log(f"loading {gguf}")
    config, base, tokenizer = specialists.load_base(gguf)
    specs = specialists.make_specialists(config, base, tokenizer, gguf, cache, seed=s.seed)
    layout = VectorLayout.of(base, order=model.checkpoint_order(base))
    base_vec = np.asarray(layout.ravel(base))
    seed_vecs = np.stack([np.asarray(layout.ravel(specs[t][0])) for t in specialists.TASKS])
    bank = recipes.SeedBank.build(seed_vecs)
    score_params, num_math, fitness_info = fitness_scorer(config, tokenizer, s)
    log(f"fitness: {fitness_info}")

    rows = {}

    def finish(name, vector, scores, info, seconds, peak, kind):
        params = layout.unravel(jnp.asarray(vector))
        log(f"{name}: held-out evaluation ({s.math_test} math problems, {s.agent_test} episodes)")
        ev = held_out(name, config, params, tokenizer, s, out, vector_key(vector))
        row = {"kind": kind, "math_accuracy": ev["math_accuracy"], "agent_reward": ev["agent_reward"],
               "agent_success": ev["agent_success"], "average": (ev["math_accuracy"] + ev["agent_reward"]) / 2,
               **split_scores(scores, num_math), "wall_seconds": seconds, "peak_rss_mb": peak,
               "eval_seconds": ev["eval_seconds"], "held_out_same_as": ev.get("same_as"), **info}
        rows[name] = row
        with open(os.path.join(out, "rows", f"{name}.json"), "w") as f:
            json.dump(row, f)
        log(f"{name}: math {row['math_accuracy']:.3f}  agent reward {row['agent_reward']:.3f} "
            f"(success {row['agent_success']:.2f})  average {row['average']:.3f}  "
            f"fitness {row['fitness_mean']:.3f}")
        return row

    def cached_row(name):
        path = os.path.join(out, "rows", f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                rows[name] = json.load(f)
            log(f"{name}: finished earlier (rows/{name}.json)")
            return True
        return False

    seed_scorer = search.Scorer(bank, layout, score_params, search.Memo(os.path.join(out, "memo", "seeds.json")))
    seed_scores = []
    for name, vector in (("base", base_vec), ("math specialist", seed_vecs[0]), ("agent specialist", seed_vecs[1])):
        start = time.perf_counter()
        scores = seed_scorer.score_vector(vector)
        if name != "base":
            seed_scores.append(scores)
        if seed_rows and not cached_row(name):
            extra = {} if name == "base" else {"finetune": {k: v for k, v in specs[name.split()[0]][1].items()
                                                            if k in ("settings", "seconds", "examples", "cached")}}
            finish(name, vector, scores, extra, time.perf_counter() - start, peak_rss_mb(), "seed")
    seed_scores = np.stack(seed_scores)
    seconds_per_child = seed_scorer.seconds / max(seed_scorer.fresh, 1) if seed_scorer.fresh else None

    def write_run(seconds):  # what --report-only needs besides the rows (the main process's settings)
        if not seed_rows:
            return
        tokens = (fitness_info["math_problems"] * fitness_info["math_tokens_per_row"]
                  + fitness_info["agent_steps"] * fitness_info["agent_tokens_per_row"])
        record = {"command": command, "settings": dataclasses.asdict(s), "fitness": fitness_info, "methods": methods,
                  "num_params": int(layout.size), "seconds": seconds,
                  "seven_b": seven_b_arithmetic(int(layout.size), seconds_per_child, tokens),
                  "environment": environment()}
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump(record, f, indent=1, default=float)

    write_run(None)
    tensor_ids = classic_merges.leaf_groups(layout)
    for name in methods:
        if cached_row(name):
            continue
        peak_rss_reset()
        start = time.perf_counter()
        bar = None
        if name in SEARCHES:
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=s.budget, desc=name, unit="child", file=sys.stdout, mininterval=5)
            scorer = search.Scorer(bank, layout, score_params,
                                        search.Memo(os.path.join(out, "memo", f"{name}.json")), bar)
            log(f"{name}: {s.budget} fitness evaluations")
            vector, scores, curve, info = run_search(name, scorer, seed_scores, num_math, s, config, base)
            if bar is not None:
                bar.close()
            info = {**info, "curve": curve, "evaluations": scorer.evaluations, "scored_now": scorer.fresh,
                    "seconds_per_child_median": float(np.median(scorer.times)) if scorer.times else None}
            kind = "search"
        else:
            vector, info = classic_merge(name, jnp.asarray(base_vec), jnp.asarray(seed_vecs), tensor_ids, s)
            vector = np.asarray(vector)
            scores = seed_scorer.score_vector(vector)
            info = {**info, "semantics": "mergekit"}
            kind = "classic"
        seconds, peak = time.perf_counter() - start, peak_rss_mb()
        row = finish(name, vector, scores, info, seconds, peak, kind)
        if name == "m2n2":
            merged = os.path.join(out, "m2n2-merged")
            checkpoint.save(merged, config, layout.unravel(jnp.asarray(vector)), dtype="float32", like=gguf)
            row["hf_directory"] = merged
            with open(os.path.join(out, "rows", "m2n2.json"), "w") as f:
                json.dump(row, f)
            log(f"wrote the M2N2 merge to {merged}")

    write_run(time.time() - t_start)
    log(f"done in {time.time() - t_start:.0f} s; writing {out}/results.json, table.md, merge.png")
    return report(out)


def report(out: str) -> dict:
    """results.json, table.md and merge.png from ``out/run.json`` and the rows in ``out/rows`` (in run order)."""
    path = os.path.join(out, "run.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist; run the pipeline with --out {out} first.")
    with open(path) as f:
        results = json.load(f)
    order = ["base", "math specialist", "agent specialist"] + list(results.get("methods", SEARCHES + CLASSIC))
    rows = {}
    for name in order:
        row_path = os.path.join(out, "rows", f"{name}.json")
        if os.path.isfile(row_path):
            with open(row_path) as f:
                rows[name] = json.load(f)
    results["rows"] = rows
    results["not_run"] = [n for n in order if n not in rows]
    results["verdict"] = verdict(rows)
    v = results["verdict"]
    if v and v["best_average"] != "m2n2":
        v["gap_paired_se"] = paired_average_gap(os.path.join(out, "evals"), v["best_average"], "m2n2")
    results["fitness_agreement"] = fitness_agreement(rows)
    measured = [r.get("seconds_per_child_median") for r in rows.values() if r.get("seconds_per_child_median")]
    if measured:  # scoring time of a child after compilation (the median over a search's children)
        results["seven_b"]["135m_seconds_per_child_measured_cpu"] = float(np.median(measured))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    write_table(os.path.join(out, "table.md"), results)
    plot(os.path.join(out, "merge.png"), rows)
    return results


def verdict(rows: dict) -> dict:
    """Does M2N2 keep >= 90 % of each specialist's held-out score on its own task, with the best average?"""
    if not {"m2n2", "math specialist", "agent specialist"} <= set(rows):
        return {}
    m = rows["m2n2"]
    math_kept = m["math_accuracy"] / max(rows["math specialist"]["math_accuracy"], 1e-9)
    agent_kept = m["agent_reward"] / max(rows["agent specialist"]["agent_reward"], 1e-9)
    best = max(rows, key=lambda n: rows[n]["average"])
    return {"math_kept": math_kept, "agent_kept": agent_kept, "keeps_90_percent": bool(min(math_kept, agent_kept) >= 0.9),
            "best_average": best, "m2n2_highest_average": best == "m2n2",
            "gap_to_best_average": rows[best]["average"] - m["average"]}


def paired_average_gap(evals: str, a: str, b: str) -> dict | None:
    """Held-out average of ``a`` minus ``b`` with its paired standard error: both models answered the same
    problems and episodes, so the gap is (mean(math_a - math_b) + mean(reward_a - reward_b)) / 2 and its
    variance (var(math diff) / n_math + var(reward diff) / n_episodes) / 4."""
    loaded = []
    for name in (a, b):
        path = os.path.join(evals, f"{name}.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            loaded.append(json.load(f))
    dm = np.asarray(loaded[0]["math_scores"], np.float64) - np.asarray(loaded[1]["math_scores"], np.float64)
    da = np.asarray(loaded[0]["agent_rewards"], np.float64) - np.asarray(loaded[1]["agent_rewards"], np.float64)
    gap = (dm.mean() + da.mean()) / 2
    se = np.sqrt(dm.var(ddof=1) / len(dm) + da.var(ddof=1) / len(da)) / 2
    return {"gap": float(gap), "se": float(se), "gap_in_se": float(gap / se) if se > 0 else None,
            "math_gap": float(dm.mean()), "agent_gap": float(da.mean())}


def fitness_agreement(rows: dict) -> dict:
    """How well the cheap teacher-forced fitness agrees with the held-out evaluation, over every model in the
    table: Pearson and Spearman correlations per task (fitness math share vs held-out math accuracy; fitness agent
    step score vs held-out agent reward; mean fitness vs held-out average), and whether fitness orders the two
    specialists as the held-out evaluation does on each task."""
    names = [n for n in rows if "fitness_math" in rows[n]]
    out = {"models": len(names)}
    if len(names) < 3:
        return out

    from scipy.stats import rankdata  # tied scores (many here) take their average rank, as Spearman's rho needs

    def corr(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.std() == 0 or b.std() == 0:
            return None
        return {"pearson": float(np.corrcoef(a, b)[0, 1]),
                "spearman": float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])}
    pairs = {"math": ("fitness_math", "math_accuracy"), "agent": ("fitness_agent", "agent_reward"),
             "average": ("fitness_mean", "average")}
    merges = [n for n in names if rows[n].get("kind") != "seed"]
    for task, (f, h) in pairs.items():
        out[task] = corr([rows[n][f] for n in names], [rows[n][h] for n in names])
        if len(merges) >= 3:  # without base and seeds, whose gaps dominate the correlation over every model
            out.setdefault("merges_only", {"models": len(merges)})[task] = corr([rows[n][f] for n in merges],
                                                                               [rows[n][h] for n in merges])
    if {"math specialist", "agent specialist"} <= set(rows):
        m, a = rows["math specialist"], rows["agent specialist"]
        out["seeds_ordered_alike"] = {
            "math": bool((m["fitness_math"] > a["fitness_math"]) == (m["math_accuracy"] > a["math_accuracy"])),
            "agent": bool((a["fitness_agent"] > m["fitness_agent"]) == (a["agent_reward"] > m["agent_reward"]))}
    return out


LABELS = {**{n: get(n).about.split(":")[0] for n in PAPER_ABLATIONS},
          "map-elites-4x4": "MAP-Elites 4 x 4", "cma-es-layers": "CMA-ES, per-layer SLERP",
          "linear": "linear (mergekit semantics)", "slerp": "SLERP t=0.5 (mergekit semantics)",
          "task-arithmetic": "task arithmetic (mergekit semantics)", "ties": "TIES (mergekit semantics)",
          "dare-linear": "DARE linear (mergekit semantics)", "dare-ties": "DARE TIES (mergekit semantics)",
          "model-stock": "Model Stock (mergekit semantics)"}


def write_table(path: str, results: dict) -> None:
    s, rows, f, env = results["settings"], results["rows"], results["fitness"], results["environment"]
    seven = results["seven_b"]
    lines = ["# Merging SmolLM2-135M-Instruct specialists (math, shop agent)", "",
             f"Command: `{results['command']}`", "",
             f"CPU: {env.get('cpu', '?')}; total "
             f"{'(unfinished run)' if results['seconds'] is None else '%.0f min' % (results['seconds'] / 60)}. "
             f"Held-out: {s['math_test']} math test problems (greedy, KV cache, answer extracted), "
             f"{s['agent_test']} agent test episodes (reward in [0, 1]; success = reward 1). "
             f"Average = (math accuracy + agent reward) / 2. Every search method: {s['budget']} fitness evaluations "
             f"(the first {s['warmup']} of the M2N2 family and MAP-Elites are random SLERP merges of the seeds); "
             f"fitness datapoints: {f['math_problems']} math problems + {f['agent_goals']} agent goals "
             f"({f['agent_steps']} expert steps).", "",
             "| model | held-out math | agent reward | agent success | average | fitness (math / agent) | "
             "wall time (s) | peak RSS (MB) |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {LABELS.get(name, name)} | {r['math_accuracy']:.3f} | {r['agent_reward']:.3f} | "
                     f"{r['agent_success']:.2f} | {r['average']:.3f} | {r['fitness_math']:.3f} / "
                     f"{r['fitness_agent']:.3f} | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    if results.get("not_run"):
        lines += ["", f"Not run (out of time): {', '.join(results['not_run'])}."]
    v = results.get("verdict") or {}
    if v:
        lines += ["", f"M2N2 keeps {100 * v['math_kept']:.0f} % of the math specialist's held-out accuracy and "
                  f"{100 * v['agent_kept']:.0f} % of the agent specialist's reward; highest average: "
                  f"{LABELS.get(v['best_average'], v['best_average'])} "
                  f"({'M2N2' if v['m2n2_highest_average'] else 'M2N2 %.3f below' % v['gap_to_best_average']})."]
        g = v.get("gap_paired_se")
        if g and g.get("gap_in_se") is not None:
            lines[-1] += (f" Paired over the same held-out problems and episodes, that gap is {g['gap']:.3f} ± "
                          f"{g['se']:.3f} (standard error; {g['gap_in_se']:.1f} standard errors; math "
                          f"{g['math_gap']:+.3f}, agent reward {g['agent_gap']:+.3f}).")
    agree = results.get("fitness_agreement") or {}
    if agree.get("math") or agree.get("agent"):
        def fmt(c):
            return "n/a (no spread)" if not c else f"Pearson {c['pearson']:.2f}, Spearman {c['spearman']:.2f}"
        seeds = agree.get("seeds_ordered_alike", {})
        lines += ["", f"Fitness against held-out, over the {agree['models']} models above: math {fmt(agree.get('math'))}; "
                  f"agent {fmt(agree.get('agent'))}; average {fmt(agree.get('average'))}. Fitness orders the two "
                  f"specialists as the held-out evaluation does on math: {'yes' if seeds.get('math') else 'no'}, "
                  f"on the agent task: {'yes' if seeds.get('agent') else 'no'}."]
        only = agree.get("merges_only")
        if only:
            lines[-1] += (f" Over the {only['models']} merged models only: math {fmt(only.get('math'))}; agent "
                          f"{fmt(only.get('agent'))}; average {fmt(only.get('average'))}.")
    per_child = seven["135m_seconds_per_child_measured_cpu"]
    lines += ["", "## Scale: 135M measured, Llama-2-7B by arithmetic", "",
              f"- Fitness forward tokens per child: {seven['fitness_tokens_per_child']:,} (padded rows). "
              f"135M: {seven['135m_flops_per_child'] / 1e12:.2f} TFLOP per child (2 x params x tokens), "
              f"measured {per_child if per_child is None else round(per_child, 1)} s per child on this CPU. "
              f"7B: {seven['7b_flops_per_child'] / 1e12:.0f} TFLOP, about "
              f"{seven['7b_seconds_per_child_h100_at_40pct']:.2f} s per child on one H100 (bf16 at 40 % of peak), "
              f"so {PAPER_BUDGET} evaluations about {PAPER_BUDGET * seven['7b_seconds_per_child_h100_at_40pct'] / 60:.0f} "
              "min of forward passes on these datapoints (the paper's GSM8K/WebShop sets are far larger).",
              f"- Memory of the recipe archive: 2 seeds + 1 working copy = 3 models (recipes and prefix Grams: "
              f"kilobytes); 135M in float32: {3 * results['num_params'] * 4 / 2**30:.2f} GiB; 7B in bfloat16: "
              f"{seven['7b_recipe_archive_gib']:.1f} GiB, against {seven['7b_dense_archive_15_gib']:.0f} GiB for 15 "
              "dense members."]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def plot(path: str, rows: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    ax.bar(x - 0.2, [rows[n]["math_accuracy"] for n in names], 0.4, label="held-out math accuracy")
    ax.bar(x + 0.2, [rows[n]["agent_reward"] for n in names], 0.4, label="held-out agent reward")
    ax.set_xticks(x, [LABELS.get(n, n).replace(" (mergekit semantics)", "*") for n in names], rotation=45, ha="right")
    ax.set_title("* mergekit semantics")
    ax.legend()
    for n in names:
        curve = rows[n].get("curve")
        if curve:
            c = np.asarray(curve)
            ax2.plot(c[:, 0], c[:, 1], label=LABELS.get(n, n))
    ax2.set_xlabel("fitness evaluations")
    ax2.set_ylabel("best mean fitness score")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

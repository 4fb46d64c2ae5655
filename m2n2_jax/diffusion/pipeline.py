"""The whole experiment as one function: train, merge, measure.

Steps: (1) a digits classifier (the judge), (2) a shared base generator,
(3) seed models fine-tuned from it, one on language A (embeddings only) and
several on language B (all parameters, disjoint data), (4) baselines (each
seed, the linear average, SLERP at the best ratio), (5) M2N2 and its
ablations merging the seeds with fitness on language-A prompts only, (6)
accuracy of every model's images on held-out noise for both languages.
:func:`run` returns a JSON-ready record plus the vectors the grid shows.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..methods import method_config, names
from ..crossover import slerp
from ..errors import ConfigError
from ..evolution import evolve
from ..flatten import VectorLayout
from ..results import mean_and_sem
from ..tasks.digits import load_digits_split
from . import classifier as clf
from . import merge, train
from . import prompts as pr
from .model import ModelConfig
from .task import merge_task, prompt_accuracy, prompt_set


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Sizes and budgets of the experiment (the defaults are the documented run)."""

    model: ModelConfig = ModelConfig()
    classifier_steps: int = 1500
    base: train.TrainConfig = train.TrainConfig(steps=100, lr=2e-3)
    lang_a: str = "japanese"
    lang_b: str = "english"
    a_train: train.TrainConfig = train.TrainConfig(steps=800, lr=1e-2)
    a_scope: str = "embeddings"
    a_images: int = 300
    b_train: train.TrainConfig = train.TrainConfig(steps=2000, lr=1e-3)
    b_scope: str = "all"
    num_b: int = 2
    fitness_samples: int = 4
    report_samples: int = 8
    methods: tuple[str, ...] = names(lambda m: m.pipeline_ablation)
    runs: int = 3
    forward_passes: int = 3200
    children_per_step: int = 4
    archive_size: int = 20
    slerp_ratios: int = 21
    seed: int = 0

    def __post_init__(self):
        if self.lang_a == self.lang_b:
            raise ConfigError(f"languages A and B must differ (both are {self.lang_a!r}).")
        if self.num_b < 1 or self.runs < 1 or self.slerp_ratios < 2:
            raise ConfigError("need num_b >= 1, runs >= 1 and slerp_ratios >= 2.")
        if self.forward_passes < 1 or self.forward_passes % self.children_per_step:
            raise ConfigError(
                f"forward_passes ({self.forward_passes}) must be a positive multiple of children_per_step "
                f"({self.children_per_step}); use {max(1, self.forward_passes // self.children_per_step) * self.children_per_step}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _key(cfg: PipelineConfig, purpose: int):
    return jax.random.fold_in(jax.random.PRNGKey(cfg.seed), purpose)


def train_seed_models(cfg: PipelineConfig, log: Callable = print):
    """(base params, {name: params}, info): the shared base and its fine-tunes."""
    (x_train, y_train), _ = load_digits_split()
    start = time.perf_counter()
    base, loss = train.train_base(cfg.model, x_train, y_train, _key(cfg, 1), cfg.base)
    log(f"base: {cfg.base.steps} steps on class-symbol prompts, final loss {loss:.3f} "
        f"({time.perf_counter() - start:.1f}s)")
    models, info = {}, {}
    start = time.perf_counter()
    models["seed-A"], loss = train.fine_tune(cfg.model, base, x_train[:cfg.a_images], y_train[:cfg.a_images],
                                             cfg.lang_a, _key(cfg, 2), cfg.a_train, cfg.a_scope)
    info["seed-A"] = {"language": cfg.lang_a, "scope": cfg.a_scope, "images": f"train[0:{cfg.a_images}]",
                      "steps": cfg.a_train.steps, "lr": cfg.a_train.lr, "final_loss": round(loss, 4)}
    log(f"seed-A: {cfg.lang_a}, scope {cfg.a_scope}, loss {loss:.3f} ({time.perf_counter() - start:.1f}s)")
    bounds = np.linspace(0, len(x_train), cfg.num_b + 1).astype(int)
    for i in range(cfg.num_b):
        lo, hi = bounds[i], bounds[i + 1]
        name = f"seed-B{i + 1}"
        start = time.perf_counter()
        models[name], loss = train.fine_tune(cfg.model, base, x_train[lo:hi], y_train[lo:hi], cfg.lang_b,
                                             _key(cfg, 10 + i), cfg.b_train, cfg.b_scope)
        info[name] = {"language": cfg.lang_b, "scope": cfg.b_scope, "images": f"train[{lo}:{hi}]",
                      "steps": cfg.b_train.steps, "lr": cfg.b_train.lr, "final_loss": round(loss, 4)}
        log(f"{name}: {cfg.lang_b}, scope {cfg.b_scope}, images {lo}:{hi}, loss {loss:.3f} "
            f"({time.perf_counter() - start:.1f}s)")
    return base, models, info


def run(cfg: PipelineConfig = PipelineConfig(), log: Callable = print):
    """(record, vectors shown in the grid {name: [D]}, layout, judge params)."""
    wall = time.perf_counter()
    clf_params, clf_acc = clf.train_classifier(_key(cfg, 0), steps=cfg.classifier_steps)
    log(f"classifier: MLP 64-{clf.HIDDEN}-10, test accuracy {clf_acc:.4f}")
    base, models, seed_info = train_seed_models(cfg, log)
    layout = VectorLayout.of(base)
    seed_names = list(models)
    seeds = jnp.stack([layout.ravel(models[n]) for n in seed_names])

    fitness = prompt_set(cfg.lang_a, _key(cfg, 100), cfg.fitness_samples)
    reports = {"A": prompt_set(cfg.lang_a, _key(cfg, 101), cfg.report_samples),
               "B": prompt_set(cfg.lang_b, _key(cfg, 102), cfg.report_samples)}
    task = merge_task(cfg.model, clf_params, layout, fitness, reports, seeds)
    metrics = jax.jit(task.metrics)
    fitness_mean = jax.jit(lambda x: jnp.mean(task.score_vector(x)))

    def prompt_accuracy_b(x):
        return prompt_accuracy(cfg.model, clf_params, layout.unravel(x), reports["B"])

    def measure(x) -> dict:
        m = jax.device_get(metrics(x))
        return {"accuracy_A": float(m["accuracy_A"]), "accuracy_B": float(m["accuracy_B"]),
                "fitness_accuracy": float(m["fitness_accuracy"]), "fitness_score": float(fitness_mean(x))}

    rows, display = {}, {}
    for name, x in [("base", layout.ravel(base))] + list(zip(seed_names, seeds)):
        rows[name] = {"kind": "seed" if name != "base" else "reference", **measure(x)}
        display[name] = x
        log(f"{name}: {_fmt(rows[name])}")
    average = merge.linear_average(seeds)
    rows["linear-average"] = {"kind": "baseline", "models": seed_names, **measure(average)}
    display["linear-average"] = average
    log(f"linear-average: {_fmt(rows['linear-average'])}")

    ratios = np.linspace(0.0, 1.0, cfg.slerp_ratios)
    best = None
    for j, name in enumerate(seed_names[1:], start=1):
        ratio, values = merge.slerp_sweep(fitness_mean, seeds[0], seeds[j], ratios)
        if best is None or values.max() > best[2]:
            best = (name, ratio, float(values.max()))
    x_slerp = slerp(seeds[0], seeds[seed_names.index(best[0])], best[1])
    rows["slerp-best"] = {"kind": "baseline", "models": ["seed-A", best[0]], "ratio": best[1],
                          "ratios_searched": int(cfg.slerp_ratios), **measure(x_slerp)}
    display["slerp-best"] = x_slerp
    log(f"slerp-best (seed-A to {best[0]}, t = {best[1]:.2f}): {_fmt(rows['slerp-best'])}")

    # Diagnostic: one split at the boundary of the language-A word rows, with
    # everything else from one B model; the bilingual model the merge space holds.
    rows_a = merge.word_rows_mask(layout, base, pr.language_token_ids(cfg.lang_a))
    rows_b = merge.word_rows_mask(layout, base, pr.language_token_ids(cfg.lang_b))
    best = None
    for j, name in enumerate(seed_names[1:], start=1):
        x = jnp.where(jnp.asarray(rows_a), seeds[0], seeds[j])
        value = float(fitness_mean(x))
        if best is None or value > best[2]:
            best = (name, x, value)
    rows["oracle-split"] = {"kind": "diagnostic", "models": [best[0], "seed-A"],
                            "note": f"{best[0]} with seed-A's {cfg.lang_a} word embeddings", **measure(best[1])}
    display["oracle-split"] = best[1]
    log(f"oracle-split ({best[0]} + seed-A's {cfg.lang_a} word rows): {_fmt(rows['oracle-split'])}")

    b_index = seed_names.index(best[0])
    restore_b = jax.jit(lambda v: prompt_accuracy_b(jnp.where(jnp.asarray(rows_b), seeds[b_index], v)))

    def provenance(v) -> dict:
        """Where a merge's word rows come from, and its B accuracy with B's word rows put back."""
        ca = merge.block_coefficients(v, seeds, rows_a)
        cb = merge.block_coefficients(v, seeds, rows_b)
        return {f"{cfg.lang_a}_rows_coeffs": [round(float(c), 3) for c in ca],
                f"{cfg.lang_b}_rows_coeffs": [round(float(c), 3) for c in cb],
                "accuracy_B_with_B_rows": float(restore_b(v))}

    for name in ("seed-A", "linear-average"):
        rows[name].update(provenance(display[name]))

    run_seeds = list(range(cfg.seed, cfg.seed + cfg.runs))
    for method in cfg.methods:
        config = method_config(method, mutation_std=0.0, children_per_step=cfg.children_per_step,
                               archive_size=cfg.archive_size)
        start = time.perf_counter()
        result = evolve(config, task, run_seeds, cfg.forward_passes, seed_models=seeds,
                        log_every=_log_every(cfg.forward_passes, cfg.children_per_step))
        vectors = result.best_vectors()
        per_run = [{**measure(v), **provenance(v)} for v in vectors]
        fits = [merge.piecewise_fit(v, seeds) for v in vectors]
        row = {"kind": "merge", "config": config.to_dict(), "runs": len(run_seeds), "run_seeds": run_seeds,
               "forward_passes": cfg.forward_passes, "wall_seconds": round(time.perf_counter() - start, 1),
               "per_run": per_run,
               "segments_per_run": [f.num_segments for f in fits],
               "max_relative_residual": max(f.max_residual for f in fits)}
        for k in ("accuracy_A", "accuracy_B", "fitness_accuracy", "fitness_score", "accuracy_B_with_B_rows"):
            mean, sem = mean_and_sem(np.asarray([[r[k]] for r in per_run]))
            row[k], row[k + "_sem"] = float(mean[0]), float(sem[0])
        rows[method] = row
        display[method] = jnp.asarray(vectors[0])
        log(f"{method}: {_fmt(row)} (mean of {len(run_seeds)} runs, {row['wall_seconds']}s; "
            f"merge segments {row['segments_per_run']})")

    record = {
        "experiment": "diffusion-merge",
        "languages": {"A": cfg.lang_a, "B": cfg.lang_b},
        "classifier": {"model": f"Flax MLP 64-{clf.HIDDEN}-10, optax AdamW, {cfg.classifier_steps} steps",
                       "test_accuracy": round(clf_acc, 4)},
        "generator": {"num_params": layout.size, **dataclasses.asdict(cfg.model)},
        "seed_models": seed_info,
        "fitness": {"language": cfg.lang_a, "prompts": int(fitness.tokens.shape[0]),
                    "samples_per_prompt": cfg.fitness_samples, "datapoints": fitness.num_datapoints,
                    "score": "classifier probability of the prompt's class"},
        "reports": {k: {"prompts": int(v.tokens.shape[0]), "samples_per_prompt": cfg.report_samples,
                        "noise": "held out (not the fitness noise)"} for k, v in reports.items()},
        "rows": rows,
        "word_rows": {"coordinates_" + cfg.lang_a: int(rows_a.sum()), "coordinates_" + cfg.lang_b: int(rows_b.sum()),
                      "first_coordinate_" + cfg.lang_a: int(np.argmax(rows_a)),
                      "first_coordinate_" + cfg.lang_b: int(np.argmax(rows_b)), "dimension": layout.size},
        "config": cfg.to_dict(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    return record, display, layout, clf_params


def _log_every(forward_passes: int, children: int) -> int:
    """About four logged points (each costs a full evaluation of the best members)."""
    quarter = forward_passes // 4
    return quarter if quarter > 0 and quarter % children == 0 and forward_passes % quarter == 0 else forward_passes


def _fmt(row: dict) -> str:
    return (f"acc A {row['accuracy_A']:.3f}, acc B {row['accuracy_B']:.3f}, "
            f"fitness {row['fitness_score']:.3f}")

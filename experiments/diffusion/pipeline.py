"""The whole experiment as one function: train (or load), merge, measure.

Steps: (1) the judge, (2) a bilingual base generator, (3) the seeds: a
Japanese one (encoder and denoiser fine-tuned on Japanese prompts) and three
English ones (denoiser only), cached on disk; (4) baselines on the Japanese
seed's encoder: each seed, the linear average, SLERP at the best ratio,
CMA-ES over per-layer coefficients minimising FID; (5) M2N2, its ablations
and the GA merging the four denoisers with the Japanese encoder fixed and a
Japanese-only fitness; (6) metrics on held-out images and noise for both
languages. :func:`run` returns a JSON-ready record and the vectors for the grid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.engine.chunk_loop import RunOptions
from m2n2_jax.methods.registry import prepare
from m2n2_jax.algorithm.crossover import slerp
from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.algorithm.groups import GroupSpec
from m2n2_jax.io.results import mean_and_sem
from m2n2_jax.tasks.digits import load_digits_split
from experiments.methods import PAPER_ABLATIONS
from experiments.diffusion import classifier as clf
from experiments.diffusion import baselines
from experiments.diffusion import train
from experiments.diffusion.model import ModelConfig
from experiments.diffusion.task import (attention_group, consistency, evaluate, full_params, merge_task, pair_scores,
                                     pair_set)

LANGS = ("japanese", "english")


@dataclasses.dataclass(frozen=True)
class SeedSpec:
    """One seed: fine-tuned from the base on ``lang`` prompts, images train[lo:hi]."""

    name: str
    lang: str
    trainable: str
    lo: int
    hi: int
    train: train.TrainConfig


# As JSDXL next to the SDXL family, the Japanese seed is a light fine-tune (100 steps on 150 images)
# and a weaker image generator than the English ones (800 to 1,500 steps on 718 to 1,437 images):
# what the English denoisers' layers add is then worth something to a Japanese-only fitness
# (docs/results/diffusion-merge/notes.md; with 300 steps it was not, and the effect did not appear).
DEFAULT_SEEDS = (
    SeedSpec("seed-JA", "japanese", "all", 0, 150, train.TrainConfig(steps=100, batch=64, lr=2e-3)),
    SeedSpec("seed-EN1", "english", "denoiser", 0, 718, train.TrainConfig(steps=1500, batch=64, lr=2e-3)),
    SeedSpec("seed-EN2", "english", "denoiser", 718, 1437, train.TrainConfig(steps=1500, batch=64, lr=2e-3)),
    SeedSpec("seed-EN3", "english", "denoiser", 0, 1437,
             train.TrainConfig(steps=800, batch=64, lr=3e-3, time_sampling="logit-normal")),
)

# Pipeline method -> (engine method, use groups): the registry's M2N2 family with parameter
# groups, plus "-one-group" (one split point over the whole denoiser) for the grouping ablation.
# All run on the dense engine with the paper's continuous rule: worst score in the population
# subtracted, capacity the archive's best (shifted) score, no mutation.
METHODS = {**{name: (name, True) for name in PAPER_ABLATIONS},
           "m2n2-one-group": ("m2n2", False)}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Sizes and budgets of the experiment (the defaults are the documented run)."""

    model: ModelConfig = ModelConfig()
    judge_steps: int = 2000
    base: train.TrainConfig = train.TrainConfig(steps=300, batch=64, lr=2e-3)
    seeds: tuple[SeedSpec, ...] = DEFAULT_SEEDS
    fitness_images: int = 160      # test-split images [0, fitness_images) with Japanese captions
    fitness_samples: int = 3       # noise draws per fitness caption (datapoints = images x samples)
    test_start: int = 160          # test-split images [test_start, 360) for every report
    methods: tuple[str, ...] = tuple(METHODS)
    runs: int = 3
    forward_passes: int = 400
    children_per_step: int = 4
    archive_size: int = 10
    slerp_ratios: int = 11
    cma_runs: int = 3
    cma_population: int = 16
    seed: int = 0

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from: {', '.join(METHODS)}.")
        if not self.seeds or self.seeds[0].lang != "japanese" or self.seeds[0].trainable != "all":
            raise ConfigError("the first seed must be the Japanese one with its own encoder (trainable 'all').")
        if self.runs < 1 or self.slerp_ratios < 2 or self.cma_runs < 0:
            raise ConfigError("need runs >= 1, slerp_ratios >= 2 and cma_runs >= 0.")
        if self.forward_passes < 1 or self.forward_passes % self.children_per_step:
            raise ConfigError(
                f"forward_passes ({self.forward_passes}) must be a positive multiple of children_per_step "
                f"({self.children_per_step}); use {max(1, self.forward_passes // self.children_per_step) * self.children_per_step}.")
        if self.fitness_samples < 1:
            raise ConfigError(f"fitness_samples must be >= 1 (got {self.fitness_samples}).")
        if not 0 < self.fitness_images <= self.test_start < 350:
            raise ConfigError("need 0 < fitness_images <= test_start < 350 (test split has 360 images).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_key(self, part: str) -> str:
        """A hash of everything the trained ``part`` ("judge", "base" or a seed name) depends on."""
        what = {"part": part, "seed": self.seed, "version": 4}
        if part == "judge":
            what["judge_steps"] = self.judge_steps
        else:
            what.update(model=dataclasses.asdict(self.model), base=dataclasses.asdict(self.base))
            if part != "base":
                index = [s.name for s in self.seeds].index(part)
                what.update(spec=dataclasses.asdict(self.seeds[index]), index=index)
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _key(cfg: PipelineConfig, purpose: int):
    return jax.random.fold_in(jax.random.PRNGKey(cfg.seed), purpose)


class _Cache:
    """Trained parts on disk, one file per part, named by the hash of its settings (None: no cache)."""

    def __init__(self, cfg: PipelineConfig, folder: str | None, log: Callable):
        self.cfg, self.folder, self.log = cfg, folder, log

    def get(self, part: str, make: Callable):
        """(tree, info) from disk, or from ``make()`` -> (tree, info), then saved."""
        path = None if self.folder is None else os.path.join(
            self.folder, f"diffusion-{part}-{self.cfg.training_key(part)}")
        if path and os.path.exists(path + ".msgpack") and os.path.exists(path + ".json"):
            with open(path + ".msgpack", "rb") as f:
                tree = jax.tree.map(jnp.asarray, flax.serialization.msgpack_restore(f.read()))
            with open(path + ".json") as f:
                info = json.load(f)
            self.log(f"{part}: loaded from {path}.msgpack (delete it to retrain)")
            return tree, info
        start = time.perf_counter()
        tree, info = make()
        info = {**info, "train_seconds": round(time.perf_counter() - start, 1)}
        if path:
            os.makedirs(self.folder, exist_ok=True)
            with open(path + ".msgpack", "wb") as f:
                f.write(flax.serialization.msgpack_serialize(jax.device_get(tree)))
            with open(path + ".json", "w") as f:
                json.dump(info, f, indent=1)
        return tree, info


def load_or_train(cfg: PipelineConfig, cache_dir: str | None, log: Callable = print):
    """(judge, judge accuracy, base, {name: params}, info): trained here or loaded from ``cache_dir``."""
    (x_train, y_train), _ = load_digits_split()
    cache = _Cache(cfg, cache_dir, log)

    def make_judge():
        judge, acc = clf.train_judge(_key(cfg, 0), steps=cfg.judge_steps)
        log(f"judge: MLP 64-{clf.HIDDEN}-{clf.FEATURES}-10, test accuracy {acc:.4f}")
        return judge, {"test_accuracy": acc}

    judge, judge_info = cache.get("judge", make_judge)

    def make_base():
        base, loss = train.train_base(cfg.model, x_train, y_train, _key(cfg, 1), cfg.base)
        log(f"base: {cfg.base.steps} steps on Japanese and English prompts, loss {loss:.3f}")
        return base, {"languages": list(LANGS), **dataclasses.asdict(cfg.base), "final_loss": round(loss, 4)}

    base, base_info = cache.get("base", make_base)
    models, info = {}, {"base": base_info}
    for i, s in enumerate(cfg.seeds):
        def make_seed(i=i, s=s):
            params, loss = train.fine_tune(cfg.model, base, x_train[s.lo:s.hi], y_train[s.lo:s.hi], s.lang,
                                           _key(cfg, 10 + i), s.train, s.trainable)
            log(f"{s.name}: {s.lang} prompts, trains {s.trainable}, images {s.lo}:{s.hi}, {s.train.steps} steps, "
                f"loss {loss:.3f}")
            return params, {"language": s.lang, "trains": s.trainable, "images": f"train[{s.lo}:{s.hi}]",
                            **dataclasses.asdict(s.train), "final_loss": round(loss, 4)}

        models[s.name], info[s.name] = cache.get(s.name, make_seed)
    return judge, judge_info["test_accuracy"], base, models, info


@dataclasses.dataclass
class Setup:
    """Everything trained and fixed before merging: models, data, the score and the measure."""

    judge: dict
    judge_accuracy: float
    base: dict
    models: dict
    seed_info: dict
    names: list
    ja_encoder: dict
    layout: VectorLayout
    seeds: jax.Array
    groups: GroupSpec
    fitness: object
    tests: dict
    score: Callable
    measure: Callable


def setup(cfg: PipelineConfig, log: Callable = print, cache_dir: str | None = None) -> Setup:
    """Train or load the models; build the Japanese fitness, the test pairs and the metrics."""
    judge, judge_acc, base, models, seed_info = load_or_train(cfg, cache_dir, log)
    _, (x_test, y_test) = load_digits_split()
    names = [s.name for s in cfg.seeds]
    ja_encoder = models[names[0]]["encoder"]
    layout = VectorLayout.of(base["denoiser"])
    seeds = jnp.stack([layout.ravel(models[n]["denoiser"]) for n in names])
    groups = GroupSpec.from_params(layout, base["denoiser"], attention_group, ["attention", "other"])
    lo, hi = 0, cfg.fitness_images
    fitness = pair_set("japanese", judge, x_test[lo:hi], y_test[lo:hi], _key(cfg, 100), cfg.fitness_samples)
    tests = {lang: pair_set(lang, judge, x_test[cfg.test_start:], y_test[cfg.test_start:], _key(cfg, 101))
             for lang in LANGS}
    m = cfg.model

    def score(x):
        return pair_scores(m, judge, full_params(layout, ja_encoder, x), fitness)

    @jax.jit
    def raw_metrics(encoder, x):
        params = full_params(layout, encoder, x)
        out = {}
        for lang, ps in tests.items():
            e = evaluate(m, judge, params, ps)
            out[f"accuracy_{lang}"], out[f"similarity_{lang}"] = e["accuracy"], e["similarity"]
            out[f"features_{lang}"] = e["features"]
        out.update(consistency(m, judge, params, tests["japanese"], tests["english"]))
        out["fitness"] = jnp.mean(pair_scores(m, judge, params, fitness))
        return out

    def measure(encoder, x) -> dict:
        r = jax.device_get(raw_metrics(encoder, x))
        row = {k: float(v) for k, v in r.items() if not k.startswith("features")}
        for lang in LANGS:
            row[f"fid_{lang}"] = clf.frechet_distance(r[f"features_{lang}"], tests[lang].ref_features)
        return row

    return Setup(judge, judge_acc, base, models, seed_info, names, ja_encoder, layout, seeds, groups,
                 fitness, tests, score, measure)


def group_swaps(st: Setup, log: Callable = print) -> dict:
    """Diagnostic: one group from the Japanese seed, the other from an English one (Japanese encoder).

    These merges lie in the space grouped crossover explores (one split per
    group at the group's end); they show whether it holds a bilingual model.
    """
    attention = jnp.asarray(st.groups.ids() == 0)
    rows = {}
    for k in range(1, len(st.names)):
        for label, x in ((f"attention {st.names[0]}, other {st.names[k]}", jnp.where(attention, st.seeds[0], st.seeds[k])),
                         (f"attention {st.names[k]}, other {st.names[0]}", jnp.where(attention, st.seeds[k], st.seeds[0]))):
            rows[label] = {"kind": "diagnostic", "encoder": st.names[0], **st.measure(st.ja_encoder, x)}
            log(f"{label}: {_fmt(rows[label])}")
    return rows


def merge_runs(engine_method: str, task, cfg: PipelineConfig, run_seeds, log: Callable = print,
               checkpoint_dir: str | None = None, label: str | None = None):
    """R runs of an M2N2-family method on the merge task, through the method registry and the
    dense engine: no mutation, the worst score in the population subtracted, capacity the
    archive's best (the engine's rule for float scores); progress lines through ``log``."""
    label = label or engine_method
    every = max(cfg.children_per_step, cfg.forward_passes // 10 // cfg.children_per_step * cfg.children_per_step)

    def progress(done, total, last):
        log(f"  {label}: {done}/{total} forward passes per run, best training score "
            f"{float(np.mean(last['best_train_score'])):.4f}")

    options = RunOptions.saving(None if checkpoint_dir is None else os.path.join(checkpoint_dir, label),
                                progress=progress, chunk_forward_passes=max(every, cfg.forward_passes // 4))
    run = prepare(engine_method, task, run_seeds, cfg.forward_passes, init="pretrained", log_every=every,
                  batch=cfg.children_per_step, archive_size=cfg.archive_size, subtract_worst=True)
    return run(options)


def run(cfg: PipelineConfig = PipelineConfig(), log: Callable = print, cache_dir: str | None = None,
        checkpoint_dir: str | None = None):
    """(record, {name: (encoder, denoiser vector)} for the grid, layout).

    checkpoint_dir: where the engine saves each merge method's runs (None: no checkpoints).
    """
    wall = time.perf_counter()
    st = setup(cfg, log, cache_dir)
    judge, judge_acc, base, models, seed_info = st.judge, st.judge_accuracy, st.base, st.models, st.seed_info
    names, ja_encoder, layout, seeds, groups = st.names, st.ja_encoder, st.layout, st.seeds, st.groups
    fitness, tests, score, measure, m = st.fitness, st.tests, st.score, st.measure, cfg.model

    rows, display = {}, {}
    base_x = layout.ravel(base["denoiser"])
    rows["base"] = {"kind": "reference", "encoder": "base", **measure(base["encoder"], base_x)}
    display["base"] = (base["encoder"], base_x)
    for n, x in zip(names, seeds):
        own = models[n]["encoder"]
        rows[n] = {"kind": "seed", "encoder": "own", **measure(own, x)}
        display[n] = (own, x)
        log(f"{n}: {_fmt(rows[n])}")
    for n, x in list(zip(names, seeds))[1:]:
        rows[n + " + JA encoder"] = {"kind": "diagnostic", "encoder": names[0], **measure(ja_encoder, x)}
        log(f"{n} + JA encoder: {_fmt(rows[n + ' + JA encoder'])}")

    average = baselines.linear_average(seeds)
    rows["linear-average"] = {"kind": "baseline", "encoder": names[0], **measure(ja_encoder, average)}
    display["linear-average"] = (ja_encoder, average)
    log(f"linear-average: {_fmt(rows['linear-average'])}")

    score_mean = jax.jit(lambda x: jnp.mean(score(x)))
    ratios = np.linspace(0.0, 1.0, cfg.slerp_ratios)
    best = None
    for j in range(1, len(names)):
        ratio, values = baselines.slerp_sweep(score_mean, seeds[0], seeds[j], ratios)
        if best is None or values.max() > best[2]:
            best = (j, ratio, float(values.max()))
    x_slerp = slerp(seeds[0], seeds[best[0]], best[1])
    rows["slerp-best"] = {"kind": "baseline", "encoder": names[0], "models": [names[0], names[best[0]]],
                          "ratio": best[1], "ratios_searched": cfg.slerp_ratios,
                          "evaluations": cfg.slerp_ratios * (len(names) - 1), **measure(ja_encoder, x_slerp)}
    display["slerp-best"] = (ja_encoder, x_slerp)
    log(f"slerp-best ({names[0]} to {names[best[0]]}, t = {best[1]:.2f}): {_fmt(rows['slerp-best'])}")

    ids, layer_names = baselines.layer_ids(layout, base["denoiser"])
    if cfg.cma_runs:
        log(f"CMA-ES over {len(layer_names)} layers x {len(names)} seeds, minimising training FID "
            f"({cfg.forward_passes} evaluations per run, {cfg.cma_runs} run(s))")
        feats_fn = lambda x: clf.features(judge, evaluate(m, judge, full_params(layout, ja_encoder, x),
                                                          fitness)["images"]).reshape(-1, clf.FEATURES)
        per_run, start = [], time.perf_counter()
        for r in range(cfg.cma_runs):
            x_cma, fid, _ = baselines.cma_es_layers(seeds, ids, len(layer_names), feats_fn, fitness.ref_features,
                                                cfg.forward_passes, cfg.seed + r, cfg.cma_population, log=log)
            per_run.append({"training_fid": fid, **measure(ja_encoder, x_cma)})
            if r == 0:
                display["cma-es-layers"] = (ja_encoder, x_cma)
        rows["cma-es-layers"] = {"kind": "baseline", "encoder": names[0], "layers": layer_names,
                          "evaluations": cfg.forward_passes, "wall_seconds": round(time.perf_counter() - start, 1),
                          **_summarise(per_run)}
        log(f"cma-es-layers: {_fmt(rows['cma-es-layers'])}")

    run_seeds = list(range(cfg.seed, cfg.seed + cfg.runs))
    tasks = {True: merge_task(layout, seeds, score, groups), False: merge_task(layout, seeds, score, None)}
    for method in cfg.methods:
        engine_method, grouped = METHODS[method]
        log(f"{method}: {cfg.runs} runs x {cfg.forward_passes} forward passes on the engine "
            f"({'groups: ' + ', '.join(groups.names) if grouped else 'one group'})")
        result = merge_runs(engine_method, tasks[grouped], cfg, run_seeds, log, checkpoint_dir, method)
        vectors = result.best
        per_run = [measure(ja_encoder, jnp.asarray(v)) for v in vectors]
        fits = [baselines.piecewise_fit(v, np.asarray(seeds)) for v in vectors]
        curve = [(int(fp), float(v)) for fp, v in
                 zip(result.forward_passes, np.mean(result.metrics["best_train_score"], axis=0))]
        rows[method] = {"kind": "merge", "encoder": names[0], "engine_method": engine_method,
                        "engine_config": result.config | {"groups": groups.to_dict() if grouped else None},
                        "groups": groups.to_dict() if grouped else "one group", "runs": cfg.runs,
                        "run_seeds": run_seeds, "forward_passes": cfg.forward_passes,
                        "training_curve": curve, "wall_seconds": round(result.wall_seconds, 1),
                        "segments_per_run": [f.num_segments for f in fits],
                        "max_relative_residual": max(f.max_residual for f in fits), **_summarise(per_run)}
        display[method] = (ja_encoder, jnp.asarray(vectors[0]))
        log(f"{method}: {_fmt(rows[method])} ({rows[method]['wall_seconds']}s; merge segments "
            f"{rows[method]['segments_per_run']})")

    record = {
        "experiment": "diffusion-merge",
        "judge": {"model": f"Flax MLP 64-{clf.HIDDEN}-{clf.FEATURES}-10, optax AdamW, {cfg.judge_steps} steps; "
                           f"features = centred {clf.FEATURES}-d layer", "test_accuracy": round(judge_acc, 4)},
        "generator": {"denoiser_params": layout.size, "encoder_params": int(VectorLayout.of(ja_encoder).size),
                      "groups": groups.to_dict(), "layers": layer_names, **dataclasses.asdict(cfg.model)},
        "seed_models": seed_info,
        "fitness": {"language": "japanese", "images": f"test[0:{cfg.fitness_images}]",
                    "noise_draws_per_caption": cfg.fitness_samples,
                    "datapoints": fitness.num_datapoints,
                    "score": "normalised judge-feature similarity (1 + cos) / 2 of generated and real image; "
                             "worst in population subtracted, capacity = best shifted score in the archive "
                             "(the dense engine's subtract_worst option with its archive-max capacity rule)"},
        "tests": {"images": f"test[{cfg.test_start}:360]", "datapoints_per_language": tests["japanese"].num_datapoints,
                  "noise": "held out; the same noise for a Japanese caption and its English translation"},
        "rows": rows,
        "bilingual_effect": bilingual_effect(rows, names[0], names, list(cfg.methods)),
        "config": cfg.to_dict(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    return record, display, layout


METRICS = ("accuracy_japanese", "similarity_japanese", "accuracy_english", "similarity_english",
           "consistency", "both_correct", "fid_japanese", "fid_english", "fitness")


def _summarise(per_run: list[dict]) -> dict:
    """Means over runs, and standard errors when there are two or more runs."""
    out = {"per_run": per_run}
    for k in per_run[0]:
        mean, sem = mean_and_sem(np.asarray([[r[k]] for r in per_run]))
        out[k] = float(mean[0])
        if len(per_run) > 1:
            out[k + "_sem"] = float(sem[0])
    return out


def bilingual_effect(rows: dict, ja_seed: str, seed_names, merges) -> dict:
    """Per merge: the issue's three checks against the Japanese seed and every seed (own encoders)."""
    ja = rows[ja_seed]
    out = {}
    for name in merges:
        row = rows[name]
        checks = {}
        for metric in ("accuracy", "similarity"):
            en, jp = f"{metric}_english", f"{metric}_japanese"
            checks[f"english_{metric}_minus_ja_seed"] = row[en] - ja[en]
            checks[f"japanese_{metric}_minus_ja_seed"] = row[jp] - ja[jp]
        best_seed = max(rows[n]["consistency"] for n in seed_names)
        checks["consistency_minus_best_seed"] = row["consistency"] - best_seed
        checks["both_correct_minus_best_seed"] = row["both_correct"] - max(rows[n]["both_correct"] for n in seed_names)
        checks["english_better"] = bool(checks["english_accuracy_minus_ja_seed"] > 0
                                        and checks["english_similarity_minus_ja_seed"] > 0)
        checks["japanese_kept"] = bool(checks["japanese_accuracy_minus_ja_seed"] >= 0
                                       and checks["japanese_similarity_minus_ja_seed"] >= 0)
        checks["consistency_above_every_seed"] = bool(checks["consistency_minus_best_seed"] > 0)
        out[name] = checks
    return out


def _fmt(row: dict) -> str:
    return (f"JA acc {row['accuracy_japanese']:.3f} sim {row['similarity_japanese']:.3f} | "
            f"EN acc {row['accuracy_english']:.3f} sim {row['similarity_english']:.3f} | "
            f"consistency {row['consistency']:.3f} both {row['both_correct']:.3f} | FID JA {row['fid_japanese']:.2f} | fitness {row['fitness']:.3f}")

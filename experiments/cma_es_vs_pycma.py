"""Full CMA-ES as this project runs it (evosax, LazyCMA_ES) against pycma, the authors' CMA-ES.

Both run on the digits task (D = 19,210) with the same fitness (training accuracy of
``task.score_vector``, float32), population 20, sigma 0.01 and the same start (the
project's N(0, 0.01^2) draw for the seed). Per generation it records the step size,
how far the mean has moved from the start, the best and mean training accuracy of the
population, the best so far, and the seconds taken.

  --impl evosax          the project's strategy and key chain (mirrors evosax_es.make_step)
  --impl pycma           pycma with the authors' options (popsize 20, seed, numpy randn)
  --impl pycma-shared    pycma fed, through its ``randn`` option, the very normal draws the
                         evosax run makes (threefry), so the two can be compared sample by sample
  --impl pycma-shared-diag   the same with pycma's covariance frozen at I ('CMA_on': 0, diagonal sampler,
                         CSA as 4.0.0 uses at full covariance): until the first eigendecomposition (about
                         188 generations here) full pycma samples, moves its mean and adapts sigma exactly
                         so, at O(D) memory instead of 12 GB
  --summarise            write summary.md and paths.png from the JSON files in --out

Each --impl holds 19,210^2 matrices (about 3 GB per copy in pycma's float64, 1.5 GB in
evosax's float32; peaks near 12 GB): run them one after another. Needs ``pip install cma``
(the ``experiments`` extra pins cma 4.0.0, the authors' version: later pycma (4.5.0 checked) switches
to two-point step-size adaptation (TPA) at 300 dimensions and more, where 4.0.0 kept CSA).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def start_point(task, seed: int):
    """The project's start for a seed (evosax_es.init_run): normal(k_start) * 0.01 from split(PRNGKey(seed), 3)."""
    import jax

    from m2n2_jax.methods.evosax_es import START_STD

    _, k_start, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
    return jax.random.normal(k_start, (task.num_params,)) * START_STD


def fitness_fn(task):
    import jax
    import jax.numpy as jnp

    from m2n2_jax.engine.devices import evaluate

    acc = lambda v: jnp.mean(task.score_vector(v))
    return jax.jit(lambda pop: evaluate(acc, pop, 2))


def evosax_keys(seed: int, generations: int):
    """k_ask of each generation in the project's key chain (ESRuns.key, then split into 3)."""
    import jax

    key, _, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
    out = []
    for _ in range(generations):
        key, k_ask, _ = jax.random.split(key, 3)
        out.append(k_ask)
    return out


def run_evosax(task, seed: int, generations: int) -> dict:
    import jax
    import jax.numpy as jnp

    from m2n2_jax.methods import evosax_es

    es, params, spec = evosax_es.build("cma-es", task.num_params)
    # evosax_es's own generation (unbatched, evaluation batch 2), also returning the accuracies
    generation = jax.jit(evosax_es.make_step(es, params, task, 2, batched=False, return_accuracy=True))

    rec = {"impl": "evosax", "seed": seed, "strategy": type(es).__name__, "eigen_every": es.eigen_every,
           "constants": {k: np.asarray(v).tolist() for k, v in params.__dict__.items()}}
    with evosax_es.single_thread_blas():
        runs = jax.jit(lambda s: evosax_es.init_run(es, params, spec, task, s))(jnp.uint32(seed))
        start = np.asarray(runs.es.mean, np.float64)
        rows = []
        for g in range(generations):
            t0 = time.perf_counter()
            runs, accuracy = generation(runs)
            accuracy = np.asarray(accuracy)
            mean = np.asarray(runs.es.mean, np.float64)
            rows.append(_row(g, float(runs.es.std), mean, start, accuracy, -float(runs.es.best_fitness),
                             time.perf_counter() - t0))
            print(rows[-1], flush=True)
            np.save(_mean_path(seed, "evosax", g), mean.astype(np.float32)) if os.environ.get("KEEP_MEANS") else None
    rec["rows"] = rows
    return rec


def _mean_path(seed, impl, g):
    return os.path.join(os.environ["KEEP_MEANS"], f"{impl}_seed{seed}_gen{g}.npy")


def _row(g, sigma, mean, start, accuracy, best_so_far, seconds):
    return {"generation": g + 1, "sigma": sigma, "mean_shift": float(np.linalg.norm(mean - start)),
            "best_accuracy": float(accuracy.max()), "mean_accuracy": float(accuracy.mean()),
            "best_so_far": best_so_far, "seconds": round(seconds, 2),
            "accuracies": [round(float(a), 6) for a in accuracy]}


def run_pycma(task, seed: int, generations: int, shared: bool, frozen: bool = False) -> dict:
    import cma
    import jax.numpy as jnp

    fitness = fitness_fn(task)
    x0 = np.asarray(start_point(task, seed), np.float64)
    calls = {"shared": 0, "other": 0}
    if shared:
        import jax

        keys = iter(evosax_keys(seed, generations))

        def randn(*shape):
            if shape == (20, task.num_params):
                calls["shared"] += 1
                return np.asarray(jax.random.normal(next(keys), shape), np.float64)
            calls["other"] += 1
            return np.random.randn(*shape)
    else:
        randn = np.random.randn
    opts = {"popsize": 20, "seed": seed, "randn": randn, "verbose": -9}
    if frozen:
        opts.update({"CMA_on": 0, "CMA_diagonal": True, "AdaptSigma": cma.sigma_adaptation.CMAAdaptSigmaCSA})
    es = cma.CMAEvolutionStrategy(x0, 0.01, opts)
    rec = {"impl": ("pycma-shared-diag" if frozen else "pycma-shared") if shared else "pycma",
           "seed": seed, "cma_version": cma.__version__}
    best = -np.inf
    rows = []
    for g in range(generations):
        t0 = time.perf_counter()
        solutions = es.ask()
        accuracy = np.asarray(fitness(jnp.asarray(np.asarray(solutions), jnp.float32)))
        es.tell(solutions, (-accuracy).tolist())
        best = max(best, float(accuracy.max()))
        rows.append(_row(g, float(es.sigma), np.asarray(es.mean, np.float64), x0, accuracy, best,
                         time.perf_counter() - t0))
        print(rows[-1], flush=True)
        np.save(_mean_path(seed, rec["impl"], g), es.mean.astype(np.float32)) if os.environ.get("KEEP_MEANS") else None
    rec["rows"] = rows
    rec["randn_calls"] = calls
    rec["sigma_adaptation"] = type(es.adapt_sigma).__name__  # constants read after the run: CSA sets cs lazily
    rec["constants"] = {"cs": getattr(es.adapt_sigma, "cs", None), "damps": getattr(es.adapt_sigma, "damps", None),
                        "cc": es.sp.cc, "c1": es.sp.c1, "cmu": es.sp.cmu, "mueff": float(es.sp.weights.mueff),
                        "chiN": float(es.const.chiN), "weights": np.asarray(es.sp.weights).tolist(),
                        "cmean": es.sp.cmean, "lazy_update_gap": float(getattr(es.sm, "lazy_update_gap", "nan")),
                        "CMA_active": bool(es.opts["CMA_active"])}
    rec["eigendecompositions"] = int(getattr(es.sm, "count_eigen", 0))
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("evosax", "pycma", "pycma-shared", "pycma-shared-diag"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--generations", type=int, default=25)
    ap.add_argument("--out", default="docs/results/digits-baselines-from-scratch/cma-es-vs-pycma")
    ap.add_argument("--summarise", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.summarise:
        from summarise_cma_vs_pycma import summarise

        summarise(args.out)
        return
    from m2n2_jax.tasks import digits_task

    task = digits_task()
    t0 = time.perf_counter()
    if args.impl == "evosax":
        rec = run_evosax(task, args.seed, args.generations)
    else:
        rec = run_pycma(task, args.seed, args.generations, shared=args.impl.startswith("pycma-shared"),
                        frozen=args.impl == "pycma-shared-diag")
    import platform

    import jax

    rec.update(generations=args.generations, dimensions=task.num_params, wall_seconds=round(time.perf_counter() - t0, 1),
               jax=jax.__version__, machine=platform.processor() or platform.machine(),
               command=f"python experiments/cma_es_vs_pycma.py --impl {args.impl} --seed {args.seed} "
                       f"--generations {args.generations}")
    with open(os.path.join(args.out, f"{args.impl}_seed{args.seed}.json"), "w") as f:
        json.dump(rec, f, indent=1, default=lambda v: np.asarray(v).tolist())


if __name__ == "__main__":
    main()

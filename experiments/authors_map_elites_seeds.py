"""Run the authors' MAP-Elites (SakanaAI/natural_niches, map_elites_fn.run_map_elites) on chosen seeds.

Their code is not part of this project: check it out elsewhere and give its folder. Their loop
derives the seed as 42 + run, with run from ``tqdm(range(runs), desc="Runes")``; the only shim is
a stand-in for that tqdm which shifts the range so one call runs one chosen seed (their code
itself is unchanged; it ran as is with jax 0.10.2). Each seed's curve goes to
OUT/map_elites_seed{S}_{N}.json as soon as it ends (test accuracy and best quality per child).

  PYTHONPATH=/path/to/natural_niches python experiments/authors_map_elites_seeds.py /path/to/natural_niches OUT 5000 100 101 ...
"""
import json
import os
import sys
import time


def main(repo: str, outdir: str, forward_passes: int, seeds: list[int]) -> None:
    os.chdir(repo)
    import jax
    try:
        import map_elites_fn  # the authors' module, found through PYTHONPATH
    except ImportError:
        sys.exit(f"authors_map_elites_seeds: cannot import map_elites_fn; run with PYTHONPATH={repo}.")

    os.makedirs(outdir, exist_ok=True)
    for seed in seeds:
        def shim(iterable, desc=None, **_):
            return range(seed - 42, seed - 42 + 1) if desc == "Runes" else iterable

        map_elites_fn.tqdm = shim
        t0 = time.time()
        (res,) = map_elites_fn.run_map_elites(1, forward_passes, True, False)
        out = {"seed": seed, "forward_passes": forward_passes, "jax": jax.__version__,
               "seconds": time.time() - t0,
               "test_accuracy": [round(float(v), 6) for v in res["test_values"]],
               "best_train_accuracy": [round(float(v), 6) for v in res["train_values"]]}
        with open(os.path.join(outdir, f"map_elites_seed{seed}_{forward_passes}.json"), "w") as f:
            json.dump(out, f)
        print("done", seed, out["test_accuracy"][-1], round(out["seconds"]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], os.path.abspath(sys.argv[2]), int(sys.argv[3]), [int(s) for s in sys.argv[4:]])

"""What ``m2n2 evolve`` and ``m2n2 merge`` write into a finished run's directory.

evolve: results.json, curves.png and best_models.npz. merge: the merged model (merged.EXT in
the first input's format), results.json, curves.png, table.md and, for dense archives,
best_models.npz. Each writer returns the one-line summary the command prints.
"""
from __future__ import annotations

import os
import sys
import resource

import numpy as np

from m2n2_jax.io import model_files, results
from m2n2_jax.methods import merge_models


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(res, settings: dict, task, **more) -> dict:
    """The record's config: the run's own, the settings given (None: not given) and the task's info."""
    return {**res.config, **{k: v for k, v in settings.items() if v is not None}, **more, "task_info": task.info}


def write_evolve_outputs(out: str, settings: dict, task, res, seeds, forward_passes: int) -> str:
    """results.json, curves.png and best_models.npz of an evolve run; returns the summary line."""
    peak_mb = peak_rss_mb()
    record = results.results_record(
        method=settings["method"], task=task.name, seeds=seeds, forward_passes=res.forward_passes,
        metrics=res.metrics, wall_seconds=res.wall_seconds,
        config=_config(res, settings, task, forward_passes=forward_passes),
        extra={**res.extra, "peak_rss_mb": round(peak_mb, 1)}, headline=task.headline_metric)
    results_path = os.path.join(out, "results.json")
    results.write_json(results_path, record)
    results.plot_curves(os.path.join(out, "curves.png"), [record])
    np.savez_compressed(os.path.join(out, "best_models.npz"), best_vectors=res.best,
                        seeds=np.asarray(seeds))
    return (f"final {task.headline_metric.replace('_', ' ')}: mean {record['final_mean']:.4f} ± "
            f"{record['final_sem']:.4f} (sem) over {len(seeds)} run(s); {record['forward_passes_per_second']:.0f} "
            f"forward passes/s; peak RSS {peak_mb:.0f} MB; wrote {results_path}, curves.png, best_models.npz")


def write_merge_outputs(out: str, paths, settings: dict, task, vectors, res, seeds, out_format: str | None = None,
                        gguf_type: str | None = None) -> str:
    """merged.EXT, results.json, curves.png, table.md (and best_models.npz for dense archives) of a
    merge of the models in ``paths`` (``vectors``); returns the summary line."""
    method = settings["method"]
    headline = task.headline_metric
    inputs = merge_models.describe_models(task, vectors)
    merged_rows = merge_models.describe_models(task, res.best)
    best = merge_models.best_run([row["train_score"] for row in merged_rows])  # the models written, not the curves
    merged_file = model_files.save_model(model_files.merged_path(out, paths[0], out_format), res.best[best],
                                         task.layout, like=paths[0], gguf_type=gguf_type or "f32")
    record = results.results_record(
        method=method, task=task.name, seeds=seeds, forward_passes=res.forward_passes, metrics=res.metrics,
        wall_seconds=res.wall_seconds, headline=headline, config=_config(res, settings, task),
        extra={**res.extra, "models": [{"path": p, **row} for p, row in zip(paths, inputs)],
               "merged": {"path": merged_file, "run": best, "seed": seeds[best], **merged_rows[best]},
               "merged_per_run": merged_rows})
    results.write_json(os.path.join(out, "results.json"), record)
    results.plot_curves(os.path.join(out, "curves.png"), [record],
                        references={f"model {i} ({os.path.basename(p.rstrip('/'))})": row.get(headline, row["train_score"])
                                    for i, (p, row) in enumerate(zip(paths, inputs))})
    names = [f"input {i}: `{p}`" for i, p in enumerate(paths)] + [f"**merged** (run {best}, seed {seeds[best]})"]
    rows = inputs + [merged_rows[best]]
    if len(seeds) > 1:
        names.append(f"merged, mean of {len(seeds)} runs")
        rows.append({k: float(np.mean([r[k] for r in merged_rows])) for k in merged_rows[0]})
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(f"# m2n2 merge: {method} on {task.name}, {settings['forward_passes']:,} forward passes per run\n\n"
                + merge_models.table_markdown(names, rows, headline)
                + "\nTrain score: mean per-datapoint score on the data the search sees. The merged model is the "
                  "archive member with the highest train score of the run whose member scores highest.\n")
    if settings["archive"] == "dense":  # with recipes the models may be huge: only the merge is written
        np.savez_compressed(os.path.join(out, "best_models.npz"), best_vectors=res.best, seeds=np.asarray(seeds))
    best_input = max(range(len(paths)), key=lambda i: inputs[i]["train_score"])
    kept = res.extra.get("reported", [{}] * len(seeds))[best]
    if kept.get("model", "merge") != "merge":
        print(f"m2n2 merge: {kept['why']}; {merged_file} is {paths[kept['best_input']]}.", file=sys.stderr)
    return (f"merged: train score {merged_rows[best]['train_score']:.4f} (best input "
            f"{inputs[best_input]['train_score']:.4f})"
            + (f", {headline.replace('_', ' ')} {merged_rows[best][headline]:.4f} (inputs "
               + ", ".join(f"{r[headline]:.4f}" for r in inputs) + ")" if headline in merged_rows[best] else "")
            + f"; wrote {merged_file}, results.json, table.md, curves.png")

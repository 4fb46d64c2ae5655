"""Report files of the diffusion merge: table.md and grid.png."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import prompts as pr
from .model import ModelConfig, fixed_noise, sample_prompts, to_raw

GRID_TEMPLATE = 1  # "suuji no {}" / "digit {}": one prompt per class and language


def table_markdown(record: dict, command: str) -> str:
    """Per-method accuracies for language-A and language-B prompts, as Markdown."""
    langs = record["languages"]
    lines = [
        f"# Diffusion merge: {langs['A']} (A, fitness) and {langs['B']} (B, never in the fitness)",
        "",
        f"Regenerate: `{command}`",
        "",
        f"Judge: {record['classifier']['model']}, test accuracy {record['classifier']['test_accuracy']:.3f}. "
        f"Accuracy = share of generated images the judge assigns to the prompt's class, over "
        f"{record['reports']['A']['prompts']} prompts x {record['reports']['A']['samples_per_prompt']} "
        "held-out noise samples per language. Fitness = mean judge probability on the language-A prompts "
        f"with {record['fitness']['samples_per_prompt']} fixed noise samples each. Merges: mean ± standard "
        f"error over runs (best member by fitness, {record['config']['forward_passes']} forward passes, no mutation).",
        "",
        "| model | kind | accuracy A (" + langs["A"] + ") | accuracy B (" + langs["B"] + ") | fitness (A, prob.) "
        "| accuracy B, " + langs["B"] + " word rows of " + record["rows"]["oracle-split"]["models"][0] + " put back |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in record["rows"].items():
        def cell(k):
            if k not in row:
                return ""
            sem = row.get(k + "_sem")
            return f"{row[k]:.3f} ± {sem:.3f}" if sem is not None else f"{row[k]:.3f}"
        label = name
        if name == "slerp-best":
            label = f"slerp-best ({row['models'][0]}→{row['models'][1]}, t={row['ratio']:.2f})"
        lines.append(f"| {label} | {row['kind']} | {cell('accuracy_A')} | {cell('accuracy_B')} | "
                     f"{cell('fitness_score')} | {cell('accuracy_B_with_B_rows')} |")
    return "\n".join(lines) + "\n"


def grid_images(model_config: ModelConfig, layout, vectors: dict, lang_a: str, lang_b: str, key):
    """(row names, column labels, images [rows, 20, 8, 8] raw scale): one sample per prompt."""
    texts, tokens, classes = [], [], []
    for lang in (lang_a, lang_b):
        t, ids, c = pr.prompts(lang, templates=[GRID_TEMPLATE])
        texts += t
        tokens.append(ids)
        classes.append(c)
    tokens = jnp.asarray(np.concatenate(tokens))
    noise = jnp.broadcast_to(fixed_noise(key, 1, 1)[:, :1], (tokens.shape[0], 1, 64))
    draw = jax.jit(lambda x: to_raw(sample_prompts(model_config, layout.unravel(x), tokens, noise))[:, 0])
    images = np.stack([np.asarray(draw(v)) for v in vectors.values()])
    return list(vectors), texts, images.reshape(len(vectors), len(texts), 8, 8)


def save_grid(path: str, names, texts, images, title: str) -> None:
    """A rows x prompts mosaic of 8x8 images with model and prompt labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.62 + 1.8, rows * 0.7 + 0.9), dpi=110)
    axes = np.atleast_2d(axes)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r, c], cmap="gray_r", vmin=0, vmax=16)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(texts[c].replace(" ", "\n"), fontsize=6)
            if c == 0:
                ax.set_ylabel(names[r], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)

"""Report files of the diffusion merge: table.md and grid.png."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.diffusion import prompts as pr
from experiments.diffusion.model import ModelConfig, fixed_noise, sample, to_raw

GRID_TEMPLATE = 1  # "suuji no {}" / "digit {}": one prompt per class and language
COLUMNS = [("accuracy_japanese", 3), ("similarity_japanese", 3), ("accuracy_english", 3), ("similarity_english", 3),
           ("consistency", 3), ("both_correct", 3), ("fid_japanese", 2), ("fid_english", 2), ("fitness", 3)]


def _cell(row: dict, key: str, digits: int) -> str:
    if key not in row:
        return ""
    sem = row.get(key + "_sem")
    return f"{row[key]:.{digits}f} ± {sem:.{digits}f}" if sem is not None else f"{row[key]:.{digits}f}"


def table_markdown(record: dict, command: str) -> str:
    """Every model's Japanese and English quality, consistency and FID, as Markdown."""
    cfg = record["config"]
    lines = [
        "# Diffusion merge: Japanese encoder fixed, four denoisers merged, Japanese-only fitness", "",
        f"Regenerate: `{command}`", "",
        f"Judge: {record['judge']['model']}, test accuracy {record['judge']['test_accuracy']:.3f}. "
        f"Accuracy = share of generated images whose judge class is the caption's; similarity = normalised "
        f"judge-feature similarity to the captioned real image; both on {record['tests']['images']} "
        f"({record['tests']['datapoints_per_language']} captions per language, held-out noise). Consistency = "
        "similarity of the images drawn from a Japanese caption and its English translation (same noise); both "
        "correct = share of such pairs whose two images the judge both assigns to the caption's class. "
        "FID in the judge's feature space against the real test images (lower is better). Fitness = mean "
        f"Japanese training similarity ({record['fitness']['images']}, "
        f"{record['fitness'].get('noise_draws_per_caption', 1)} noise draw(s) per caption: "
        f"{record['fitness']['datapoints']} datapoints). Merges: mean ± standard error over "
        f"{cfg['runs']} runs of {cfg['forward_passes']} forward passes (best member by training score); "
        f"CMA-ES: {cfg['cma_runs']} run(s) of {cfg['forward_passes']} evaluations.", "",
        "| model | kind | encoder | JA accuracy | JA similarity | EN accuracy | EN similarity | consistency "
        "| both correct | FID JA | FID EN | fitness (JA train) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in record["rows"].items():
        label = name
        if name == "slerp-best":
            label = f"slerp-best ({row['models'][0]}→{row['models'][1]}, t={row['ratio']:.2f})"
        cells = " | ".join(_cell(row, k, d) for k, d in COLUMNS)
        lines.append(f"| {label} | {row['kind']} | {row['encoder']} | {cells} |")
    return "\n".join(lines) + "\n"


def grid_images(model_config: ModelConfig, layout, display: dict, key):
    """(row names, column labels, images [rows, 20, 8, 8] raw scale): one sample per prompt, same noise."""
    texts, tokens = [], []
    for lang in ("japanese", "english"):
        t, ids, _ = pr.prompts(lang, templates=[GRID_TEMPLATE])
        texts += t
        tokens.append(ids)
    tokens = jnp.asarray(np.concatenate(tokens))
    noise = jnp.broadcast_to(fixed_noise(key, 1, 1), (tokens.shape[0], 1, 64))
    draw = jax.jit(lambda enc, x: to_raw(sample(model_config, {"encoder": enc, "denoiser": layout.unravel(x)},
                                                 tokens, noise))[:, 0])
    images = np.stack([np.asarray(draw(enc, x)) for enc, x in display.values()])
    return list(display), texts, images.reshape(len(display), len(texts), 8, 8)


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

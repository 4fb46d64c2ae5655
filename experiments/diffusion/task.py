"""Datapoints, scores and metrics of the denoiser merge.

A datapoint is a (caption, real image) pair, as STAIR/COCO pairs are in the
paper: the caption names the real image's class in one language (template
cycling), and one noise sample fixes the generation. Its score is the
normalised similarity, in the judge's feature space, of the generated and
the real image (continuous, in [0, 1]).

The merge works on the flat vector of the *denoiser* only; the encoder is
fixed (the Japanese seed's), so ``full_params(x)`` puts it back unchanged.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.tasks.base import Task
from experiments.diffusion import classifier as clf
from experiments.diffusion import prompts as pr
from experiments.diffusion.model import ModelConfig, fixed_noise, sample, to_raw


@flax.struct.dataclass
class PairSet:
    """tokens [M, T], classes [M], noise [M, S, 64], ref_features [M, F]: M captioned images, S samples."""

    tokens: jax.Array
    classes: jax.Array
    noise: jax.Array
    ref_features: jax.Array

    @property
    def num_datapoints(self) -> int:
        return self.noise.shape[0] * self.noise.shape[1]


def captions(lang: str, classes) -> tuple[list[str], np.ndarray]:
    """(texts, token ids [M, T]): image m gets template m mod (templates) of its class."""
    language = pr.language(lang)
    texts = [language.templates[m % len(language.templates)].format(language.words[int(c)])
             for m, c in enumerate(classes)]
    return texts, np.stack([pr.tokenize(t) for t in texts])


def pair_set(lang: str, judge_params, raw_images, classes, key, samples: int = 1) -> PairSet:
    """Captions in ``lang`` for real images [M, 64] (raw 0..16) of ``classes`` [M], noise from ``key``."""
    if samples < 1 or len(raw_images) != len(classes) or len(classes) == 0:
        raise ConfigError(f"need >= 1 sample and one class per image (got {samples}, {len(raw_images)} images, "
                          f"{len(classes)} classes).")
    _, tokens = captions(lang, classes)
    return PairSet(jnp.asarray(tokens), jnp.asarray(classes, jnp.int32),
                   fixed_noise(key, len(classes), samples),
                   clf.features(judge_params, jnp.asarray(raw_images, jnp.float32)))


def generate(config: ModelConfig, params, pairs: PairSet):
    """Raw-scale images [M, S, 64] of a full model for a pair set."""
    return to_raw(sample(config, params, pairs.tokens, pairs.noise))


def pair_scores(config: ModelConfig, judge_params, params, pairs: PairSet):
    """Per-datapoint normalised similarity [M * S] of generated and real images."""
    feats = clf.features(judge_params, generate(config, params, pairs))
    return clf.similarity(feats, pairs.ref_features[:, None, :]).reshape(-1)


def evaluate(config: ModelConfig, judge_params, params, pairs: PairSet) -> dict:
    """Judge accuracy of the caption's class, mean similarity, and the features [M*S, F] (for FID)."""
    images = generate(config, params, pairs)
    feats = clf.features(judge_params, images)
    return {"accuracy": jnp.mean(clf.is_correct(judge_params, images, pairs.classes[:, None])),
            "similarity": jnp.mean(clf.similarity(feats, pairs.ref_features[:, None, :])),
            "features": feats.reshape(-1, feats.shape[-1]), "images": images}


def consistency(config: ModelConfig, judge_params, params, pairs_a: PairSet, pairs_b: PairSet) -> dict:
    """Cross-lingual consistency of caption pairs (same image, same noise, two languages).

    "consistency": mean similarity of the two images (the paper's measure; it
    is also high for two equally blurred images); "both_correct": share of
    pairs whose two images the judge both assigns to the caption's class.
    """
    ia = generate(config, params, pairs_a)
    ib = generate(config, params, pairs_b.replace(noise=pairs_a.noise))
    sim = clf.similarity(clf.features(judge_params, ia), clf.features(judge_params, ib))
    both = clf.is_correct(judge_params, ia, pairs_a.classes[:, None]) * clf.is_correct(
        judge_params, ib, pairs_b.classes[:, None])
    return {"consistency": jnp.mean(sim), "both_correct": jnp.mean(both)}


def full_params(layout: VectorLayout, encoder, x):
    """The whole model: the fixed ``encoder`` and the denoiser of flat vector x."""
    return {"encoder": encoder, "denoiser": layout.unravel(x)}


def attention_group(path: str) -> int:
    """0 for parameters of a cross-attention layer, 1 for the rest of the denoiser."""
    return 0 if "cross_attn" in path else 1


def merge_task(layout: VectorLayout, seeds, score_vector, groups=None, name: str = "diffusion-merge") -> Task:
    """The denoiser merge as an engine :class:`Task`: flat denoisers, the Japanese fitness
    ``score_vector(x) -> [N]`` (continuous, so the engine's capacity is the archive's
    best), the given seeds [K, D] and parameter ``groups`` (None: one split point)."""
    seeds = jnp.asarray(seeds)

    def no_scratch(key):
        raise ConfigError("the diffusion merge starts from its seed denoisers; run it with init='pretrained'.")

    return Task(name=name, layout=layout, num_datapoints=int(jax.eval_shape(score_vector, seeds[0]).shape[0]),
                score_vector=score_vector, metrics=lambda x: {}, random_seed=no_scratch,
                pretrained_seeds=lambda: seeds, groups=groups, headline_metric="best_train_score")

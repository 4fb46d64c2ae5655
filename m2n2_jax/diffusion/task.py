"""Scores of a generator on prompts, and the M2N2 task built from them.

A :class:`PromptSet` fixes prompts, their classes and the noise of S samples
per prompt, so scoring a generator is a deterministic function of its
parameters. The per-datapoint score of prompt m and sample s is the fixed
classifier's probability of class m for the image generated from that noise.
The task's score function works on flat parameter vectors (the engine's
representation), so any archive that can materialise a vector can use it.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from ..errors import ConfigError
from ..flatten import VectorLayout
from ..tasks.base import Task
from . import classifier as clf
from . import prompts as pr
from .model import ModelConfig, fixed_noise, sample_prompts, to_raw


@flax.struct.dataclass
class PromptSet:
    """tokens [M, T], classes [M], noise [M, S, 64]: M prompts, S samples each."""

    tokens: jax.Array
    classes: jax.Array
    noise: jax.Array

    @property
    def num_datapoints(self) -> int:
        return self.noise.shape[0] * self.noise.shape[1]


def prompt_set(lang: str, key, samples: int, templates=None) -> PromptSet:
    """All prompts of a language (or chosen templates) with noise drawn from ``key``."""
    if samples < 1:
        raise ConfigError(f"need at least one sample per prompt (got {samples}).")
    _, tokens, classes = pr.prompts(lang, templates)
    return PromptSet(jnp.asarray(tokens), jnp.asarray(classes), fixed_noise(key, len(classes), samples))


def generate(model_config: ModelConfig, params, prompts: PromptSet):
    """Raw-scale images [M, S, 64] of a generator for a prompt set."""
    return to_raw(sample_prompts(model_config, params, prompts.tokens, prompts.noise))


def prompt_scores(model_config: ModelConfig, clf_params, params, prompts: PromptSet):
    """Per-datapoint scores [M * S]: classifier probability of each prompt's class."""
    images = generate(model_config, params, prompts)
    return clf.class_probability(clf_params, images, prompts.classes[:, None]).reshape(-1)


def prompt_accuracy(model_config: ModelConfig, clf_params, params, prompts: PromptSet):
    """Fraction of generated images the classifier assigns to their prompt's class."""
    images = generate(model_config, params, prompts)
    return jnp.mean(clf.is_correct(clf_params, images, prompts.classes[:, None]))


def merge_task(model_config: ModelConfig, clf_params, layout: VectorLayout, fitness: PromptSet,
               reports: dict[str, PromptSet], seed_vectors, name: str = "diffusion-merge") -> Task:
    """An M2N2 Task: score on ``fitness`` prompts; metrics = accuracy on each report set."""

    def score_vector(x):
        return prompt_scores(model_config, clf_params, layout.unravel(x), fitness)

    def metrics(x):
        params = layout.unravel(x)
        out = {f"accuracy_{k}": prompt_accuracy(model_config, clf_params, params, v) for k, v in reports.items()}
        out["fitness_accuracy"] = prompt_accuracy(model_config, clf_params, params, fitness)
        return out

    def random_seed(key):
        raise ConfigError("the diffusion merge task starts from pre-trained seed models only.")

    seeds = jnp.asarray(seed_vectors)
    return Task(name=name, layout=layout, num_datapoints=fitness.num_datapoints,
                score_vector=score_vector, metrics=metrics, random_seed=random_seed,
                pretrained_seeds=lambda: seeds, info={"num_params": layout.size})

"""scikit-learn digits with a Flax MLP 64-256-10: the paper's MNIST protocol.

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, raw values 0..16),
first 80 % (1,437) train, last 20 % (360) test, no shuffling or scaling.
Model: Dense(256) - ReLU - Dense(10), 19,210 parameters, flattened in the
authors' order (kernel, bias, kernel, bias) so that reference-order runs match
their code bit for bit. Score: per-datapoint correctness (1.0 / 0.0).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..flatten import VectorLayout
from .base import Task

TRAIN_FRACTION = 0.8
SEED_STD = 0.01


class MLP(nn.Module):
    """Dense(hidden) - ReLU - Dense(classes)."""

    hidden: int = 256
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.classes)(x)


@functools.lru_cache(maxsize=1)
def load_digits_split(train_fraction: float = TRAIN_FRACTION):
    """((x_train, y_train), (x_test, y_test)) as float32 / int32 numpy arrays."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    cut = int(len(images) * train_fraction)
    images = images.astype(np.float32)
    labels = labels.astype(np.int32)
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def mlp_layout(model: MLP, input_dim: int) -> VectorLayout:
    """Flat layout of an MLP's params: kernel_0, bias_0, kernel_1, bias_1."""
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, input_dim)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    # jax.tree.leaves sorts dict keys: Dense_0/bias, Dense_0/kernel, Dense_1/bias, ...
    return VectorLayout.of(params, order=(1, 0, 3, 2))


def accuracy_count(logits, labels) -> jax.Array:
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def classification_task(name: str, model: MLP, train, test, seed_std: float = SEED_STD,
                        pretrained_seeds=None, info=None) -> Task:
    """A classification Task: score = per-example correctness of ``model``."""
    (x_train, y_train), (x_test, y_test) = train, test
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    layout = mlp_layout(model, x_train.shape[1])

    def score_vector(x):
        logits = model.apply(layout.unravel(x), x_train)
        return (jnp.argmax(logits, axis=-1) == y_train).astype(jnp.float32)

    def metrics(x):
        logits = model.apply(layout.unravel(x), x_test)
        return {"test_accuracy": accuracy_count(logits, y_test) / y_test.shape[0]}

    def random_seed(key):
        return jax.random.normal(key, (layout.size,)) * seed_std

    return Task(name=name, layout=layout, num_datapoints=int(x_train.shape[0]),
                score_vector=score_vector, metrics=metrics, random_seed=random_seed,
                pretrained_seeds=pretrained_seeds, train_labels=y_train,
                info={"train_size": int(x_train.shape[0]), "test_size": int(x_test.shape[0]),
                      "num_params": layout.size, **(info or {})})


def digits_task(hidden: int = 256) -> Task:
    from ..pretrained import digits_pretrained_pair

    train, test = load_digits_split()
    return classification_task(
        "digits", MLP(hidden=hidden), train, test,
        pretrained_seeds=lambda: digits_pretrained_pair(hidden=hidden),
        info={"data": "sklearn.datasets.load_digits, first 80% train / last 20% test, raw 0..16 inputs",
              "model": f"Flax MLP 64-{hidden}-10"})

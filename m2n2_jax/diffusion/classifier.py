"""The fixed digits classifier that scores generated images.

A Flax MLP 64-128-10 trained with optax (Adam) on the digits training split
(first 80 %, raw values 0..16 scaled by 1/16). It never sees generated images
and is frozen before any generator is trained; its test accuracy is reported.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..tasks.digits import MLP, load_digits_split

HIDDEN = 128


def classifier_model() -> MLP:
    return MLP(hidden=HIDDEN, classes=10)


def logits(params, raw_images):
    """Class logits [..., 10] of images on the raw digits scale 0..16."""
    return classifier_model().apply(params, jnp.asarray(raw_images, jnp.float32) / 16.0)


def class_probability(params, raw_images, classes):
    """Probability [...] the classifier gives each image's intended class."""
    probs = jax.nn.softmax(logits(params, raw_images), axis=-1)
    return jnp.take_along_axis(probs, jnp.asarray(classes)[..., None], axis=-1)[..., 0]


def is_correct(params, raw_images, classes):
    """1.0 where the classifier's top class is the intended one, else 0.0."""
    return (jnp.argmax(logits(params, raw_images), axis=-1) == classes).astype(jnp.float32)


def train_classifier(key, steps: int = 1500, batch: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4):
    """(params, test accuracy) of a classifier trained on the digits training split."""
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    init_key, data_key = jax.random.split(key)
    params = classifier_model().init(init_key, jnp.zeros((1, 64)))
    opt = optax.adamw(lr, weight_decay=weight_decay)
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    @jax.jit
    def run(params, key):
        def step(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (batch,), 0, x_train.shape[0])
            grads = jax.grad(loss_fn)(p, x_train[idx], y_train[idx])
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
        return params

    params = run(params, data_key)
    accuracy = float(np.mean(np.asarray(jnp.argmax(logits(params, x_test), -1)) == y_test))
    return params, accuracy

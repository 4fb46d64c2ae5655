"""Bring your own model: a small Flax CNN on scikit-learn's digits, as a task plugin.

Two ways to use this file:

1. Train two specialists (digits 0-4 and 5-9) and save them as .msgpack files:

       python examples/digits_cnn.py --out runs/cnn-specialists

2. Merge them from the command line, scoring on all ten digits:

       m2n2 merge runs/cnn-specialists/low.msgpack runs/cnn-specialists/high.msgpack \
           --task examples/digits_cnn.py:make_task --task-arg channels=8 --out runs/cnn-merged

``make_task`` is all a plugin needs: it returns ``m2n2_jax.tasks.custom_task``
built from example parameters, a per-datapoint score function on the training
data and a dict of held-out metrics (the first one leads the result files).
"""
from __future__ import annotations

import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2n2_jax.io import model_files
from m2n2_jax.tasks import custom_task
from m2n2_jax.tasks.digits import load_digits_split


class DigitsCNN(nn.Module):
    """Conv 3x3 (channels) - ReLU - 2x2 average pool - Dense(10) on 8x8 images."""

    channels: int = 8

    @nn.compact
    def __call__(self, images):  # [B, 64], raw 0..16
        x = images.reshape(-1, 8, 8, 1) / 16.0
        x = nn.relu(nn.Conv(self.channels, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def make_task(channels: int = 8):
    """The plugin: score = per-image correctness on the 1,437 training digits; metric = test accuracy."""
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    model = DigitsCNN(channels=channels)
    example = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))

    def score(params):
        return (jnp.argmax(model.apply(params, x_train), -1) == y_train).astype(jnp.float32)

    def metrics(params):
        return {"test_accuracy": jnp.mean(jnp.argmax(model.apply(params, x_test), -1) == y_test)}

    return custom_task(f"digits-cnn{channels}", example, score, metrics,
                       info={"model": f"Flax CNN conv3x3x{channels}-avgpool-dense10", "data": "sklearn digits"})


def train_specialist(channels: int, labels, steps: int = 300, seed: int = 0):
    """Adam on the training digits whose label is in ``labels``; returns the parameter pytree."""
    (x_train, y_train), _ = load_digits_split()
    keep = np.isin(y_train, labels)
    x, y = jnp.asarray(x_train[keep]), jnp.asarray(y_train[keep])
    model = DigitsCNN(channels=channels)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 64)))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean())(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(steps):
        params, state, _ = step(params, state)
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train two digits-CNN specialists (0-4, 5-9) and save them")
    parser.add_argument("--out", default="runs/cnn-specialists")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    task = make_task(args.channels)
    for name, labels, seed in (("low", [0, 1, 2, 3, 4], 1), ("high", [5, 6, 7, 8, 9], 2)):
        params = train_specialist(args.channels, labels, args.steps, seed)
        path = model_files.save_model(os.path.join(args.out, f"{name}.msgpack"), task.layout.ravel(params),
                                      task.layout)
        acc = float(task.metrics(task.layout.ravel(params))["test_accuracy"])
        print(f"{path}: digits {labels[0]}-{labels[-1]} specialist, test accuracy on all ten digits {acc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

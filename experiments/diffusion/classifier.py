"""The judge: a fixed digits network whose feature space stands in for CLIP.

A Flax MLP 64-128-32-10 trained with optax (AdamW, cross-entropy) on the
digits training split (first 80 %, raw values scaled by 1/16). Its 32-d
pre-activation layer, centred on the training images' mean feature (so that
cosines separate classes instead of all sharing one mean direction), is the
feature space: the normalised similarity of two
images is (1 + cos(f(a), f(b))) / 2 in [0, 1] (the paper's "normalised CLIP
similarity"), and FID is computed there too. Its top class gives the
accuracy of a prompt's class. Trained first and frozen; it never sees a
generated image.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2n2_jax.tasks.digits import load_digits_split

HIDDEN = 128
FEATURES = 32


class Judge(nn.Module):
    """Raw images [..., 64] (0..16) -> (features [..., 32], logits [..., 10])."""

    @nn.compact
    def __call__(self, raw):
        h = nn.relu(nn.Dense(HIDDEN, name="hidden")(jnp.asarray(raw, jnp.float32) / 16.0))
        f = nn.Dense(FEATURES, name="features")(h)
        return f, nn.Dense(10, name="head")(nn.relu(f))


def features(judge, raw):
    """Centred judge features [..., 32] of raw images; ``judge`` = {"params", "center"}."""
    return Judge().apply({"params": judge["params"]}, raw)[0] - judge["center"]


def logits(judge, raw):
    return Judge().apply({"params": judge["params"]}, raw)[1]


def similarity(fa, fb):
    """Normalised cosine similarity (1 + cos) / 2 in [0, 1] of feature vectors [..., F]."""
    na = jnp.linalg.norm(fa, axis=-1)
    nb = jnp.linalg.norm(fb, axis=-1)
    cos = jnp.sum(fa * fb, axis=-1) / jnp.maximum(na * nb, 1e-12)
    return (1.0 + jnp.clip(cos, -1.0, 1.0)) / 2.0


def is_correct(params, raw, classes):
    """1.0 where the judge's top class is the intended one, else 0.0."""
    return (jnp.argmax(logits(params, raw), axis=-1) == classes).astype(jnp.float32)


def train_judge(key, steps: int = 2000, batch: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4):
    """(judge {"params", "center"}, test accuracy) of a judge trained on the digits training split."""
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    init_key, data_key = jax.random.split(key)
    params = Judge().init(init_key, jnp.zeros((1, 64)))
    opt = optax.adamw(lr, weight_decay=weight_decay)
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(Judge().apply(p, x)[1], y).mean()

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
    judge = {"params": params["params"], "center": jnp.mean(Judge().apply(params, x_train)[0], axis=0)}
    accuracy = float(np.mean(np.asarray(jnp.argmax(logits(judge, x_test), -1)) == y_test))
    return judge, accuracy


def frechet_distance(fa, fb) -> float:
    """FID between two sets of feature vectors [n, F] (Gaussian fit of each, float64 on the host)."""
    import scipy.linalg

    a, b = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb)
    root = np.real(root)
    return float(mu @ mu + np.trace(ca + cb - 2.0 * root))

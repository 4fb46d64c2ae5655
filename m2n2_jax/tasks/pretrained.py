"""The two pre-trained digits models that the paper merges, cached on disk.

Model A is trained on the training digits 0-4, model B on 5-9, each with optax
Adam (lr 3e-3) on the softmax cross-entropy over all ten classes, full batch,
for 10 epochs, starting from two N(0, 0.01^2) draws from the two halves of
``split(PRNGKey(42), 2)``. That is the authors' recipe, and since the digits
layout is theirs, the pair is theirs too (test accuracy 0.4417 and 0.4528). The pair is stored as flat vectors in
``$M2N2_CACHE_DIR`` (default ``~/.cache/m2n2_jax``) under a name that encodes
every setting, so repeated runs reuse it and a change of setting retrains.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2n2_jax.errors import DataError

LEARNING_RATE = 3e-3
EPOCHS = 10
SEED = 42
SPLIT_LABEL = 5  # A: labels < 5, B: labels >= 5


def cache_dir() -> str:
    """Where pre-trained models are cached ($M2N2_CACHE_DIR or ~/.cache/m2n2_jax)."""
    return os.environ.get("M2N2_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "m2n2_jax")


def train_classifier(model, layout, x, y, start, *, learning_rate: float = LEARNING_RATE,
                     epochs: int = EPOCHS) -> jax.Array:
    """Flat params after ``epochs`` full-batch Adam steps of cross-entropy from ``start`` [D]."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    opt = optax.adam(learning_rate)

    def loss(v):
        logits = model.apply(layout.unravel(v), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        v, opt_state = carry
        grads = jax.grad(loss)(v)
        updates, opt_state = opt.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state), None

    (v, _), _ = jax.lax.scan(step, (start, opt.init(start)), None, length=epochs)
    return v


def train_digits_pair(hidden: int = 256, *, seed: int = SEED, learning_rate: float = LEARNING_RATE,
                      epochs: int = EPOCHS) -> np.ndarray:
    """[2, D] models trained on digits 0-4 and on 5-9 (no caching)."""
    from m2n2_jax.tasks.digits import MLP, load_digits_split, mlp_layout

    (x, y), _ = load_digits_split()
    model = MLP(hidden=hidden)
    layout = mlp_layout(model, x.shape[1])
    k_a, k_b = jax.random.split(jax.random.PRNGKey(seed), 2)
    pair = []
    for k, mask in ((k_a, y < SPLIT_LABEL), (k_b, y >= SPLIT_LABEL)):
        start = jax.random.normal(k, (layout.size,)) * 0.01
        pair.append(train_classifier(model, layout, x[mask], y[mask], start,
                                     learning_rate=learning_rate, epochs=epochs))
    return np.asarray(jnp.stack(pair))


def cache_path(hidden: int = 256, seed: int = SEED, learning_rate: float = LEARNING_RATE,
               epochs: int = EPOCHS) -> str:
    name = f"digits-pretrained-v2-h{hidden}-seed{seed}-adam{learning_rate:g}-ep{epochs}-split{SPLIT_LABEL}.npz"
    return os.path.join(cache_dir(), name)


def digits_pretrained_pair(hidden: int = 256, *, seed: int = SEED, learning_rate: float = LEARNING_RATE,
                           epochs: int = EPOCHS) -> np.ndarray:
    """The cached pre-trained pair [2, D]; trained and written on first use."""
    path = cache_path(hidden, seed, learning_rate, epochs)
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                return f["models"]
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"the cached pre-trained models at {path} cannot be read ({err}); "
                            "delete the file to retrain them.") from None
    models = train_digits_pair(hidden, seed=seed, learning_rate=learning_rate, epochs=epochs)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, models=models)
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"cannot write the pre-trained models to {path} ({err}); "
                        "set M2N2_CACHE_DIR to a writable directory.") from None
    return models

"""scikit-learn digits with a Flax MLP 64-256-10: the paper's MNIST protocol.

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, raw values 0..16),
first 80 % (1,437) train, last 20 % (360) test, no shuffling or scaling.
Model: Dense(256) - ReLU - Dense(10), 19,210 parameters, flattened in the
authors' order (kernel, bias, kernel, bias) so that reference-order runs match
their code bit for bit. Score: per-datapoint correctness (1.0 / 0.0).

The pre-trained pair the paper merges: model A trained on the training digits
0-4, model B on 5-9, each with optax Adam (lr 3e-3) on the softmax
cross-entropy over all ten classes, full batch, for 10 epochs, starting from
two N(0, 0.01^2) draws from the two halves of ``split(PRNGKey(42), 2)``. That
is the authors' recipe, and since the digits layout is theirs, the pair is
theirs too (test accuracy 0.4417 and 0.4528). It is stored as flat vectors in
``$M2N2_CACHE_DIR`` (default ``~/.cache/m2n2_jax``) under a name that encodes
every setting, so repeated runs reuse it and a change of setting retrains.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import DataError
from m2n2_jax.tasks.base import Task
from m2n2_jax.tasks.classification import EPOCHS, LEARNING_RATE, MLP, classification_task, mlp_layout, train_classifier

TRAIN_FRACTION = 0.8
SEED = 42
SPLIT_LABEL = 5  # A: labels < 5, B: labels >= 5


@functools.lru_cache(maxsize=1)
def load_digits_split(train_fraction: float = TRAIN_FRACTION):
    """((x_train, y_train), (x_test, y_test)) as float32 / int32 numpy arrays."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    cut = int(len(images) * train_fraction)
    images = images.astype(np.float32)
    labels = labels.astype(np.int32)
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def digits_task(hidden: int = 256, matmul_precision: str = "float32") -> Task:
    train, test = load_digits_split()
    return classification_task(
        "digits", MLP(hidden=hidden), train, test, matmul_precision=matmul_precision,
        pretrained_seeds=lambda: digits_pretrained_pair(hidden=hidden),
        info={"data": "sklearn.datasets.load_digits, first 80% train / last 20% test, raw 0..16 inputs",
              "model": f"Flax MLP 64-{hidden}-10"})


def cache_dir() -> str:
    """Where pre-trained models are cached ($M2N2_CACHE_DIR or ~/.cache/m2n2_jax)."""
    return os.environ.get("M2N2_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "m2n2_jax")


def train_digits_pair(hidden: int = 256, *, seed: int = SEED, learning_rate: float = LEARNING_RATE,
                      epochs: int = EPOCHS) -> np.ndarray:
    """[2, D] models trained on digits 0-4 and on 5-9 (no caching)."""
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

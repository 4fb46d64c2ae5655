"""A small classification task and two specialist seeds for recipe-archive tests (binary scores)."""
import jax.numpy as jnp
import numpy as np

from m2n2_jax.tasks.custom import custom_task


def linear_task(features: int = 12, classes: int = 4, train: int = 96, test: int = 200, seed: int = 0):
    """A linear classifier; seed k knows classes {k, k + 2} well and the others badly."""
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=(features, classes)).astype(np.float32)
    x = rng.normal(size=(train + test, features)).astype(np.float32)
    y = np.argmax(x @ true_w, axis=1)
    (xtr, ytr), (xte, yte) = (x[:train], y[:train]), (x[train:], y[train:])

    def accuracy(params, xs, ys):
        return (jnp.argmax(xs @ params["w"], axis=1) == ys).astype(jnp.float32)

    task = custom_task("linear", {"w": np.zeros((features, classes), np.float32)},
                       lambda p: accuracy(p, xtr, ytr), lambda p: {"test_accuracy": jnp.mean(accuracy(p, xte, yte))})
    seeds = []
    for k in range(2):
        w = true_w + rng.normal(scale=0.8, size=true_w.shape).astype(np.float32)
        w[:, [1 - k, 3 - k]] *= 0.3   # weak on the other seed's classes
        seeds.append(w.ravel())
    return task, np.stack(seeds).astype(np.float32)

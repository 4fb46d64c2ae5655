"""The reference's procedure as a plain per-child Python loop (benchmark baseline).

One child per iteration: parent selection in eager jax ops, then jitted
crossover, mutation, training-set evaluation, insertion and a test-set
evaluation of the best member, each dispatched from Python, as the authors'
code does. It follows the reference key order, so it also serves as an
independent check of the compiled engine in ``key_order="reference"`` mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.algorithm import niches
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.tasks.base import Task


class PerChildLoop:
    """Jitted pieces built once; ``run`` loops over children in Python."""

    def __init__(self, config: M2N2Config, task: Task):
        self.config, self.task = config, task
        params = config.params()
        self.score = jax.jit(task.score_vector)
        self.test_metric = jax.jit(lambda x: task.metrics(x)["test_accuracy"])
        self.insert = jax.jit(lambda p, s, c, cs, cap: niches.insert(p, s, c, cs, cap, config.alpha)[:2])
        self.cross = jax.jit(lambda k, x, y: xo.crossover(k, x, y, config.use_split_point, params.slerp_eps,
                                                          reference=True))
        self.mutate = jax.jit(lambda k, x: xo.mutate(k, x, config.mutation_std, config.noise_generator))

    def run(self, seed: int, forward_passes: int):
        """Returns (params [P, D], scores [P, N], test accuracy after every child)."""
        config, task, score, insert = self.config, self.task, self.score, self.insert
        key = jax.random.PRNGKey(seed)
        key, k_a, k_b = jax.random.split(key, 3)
        size, n = config.archive_size, task.num_datapoints
        capacity = jnp.ones((n,), jnp.float32) if task.capacity is None else task.capacity
        params = jnp.zeros((size, task.num_params), jnp.float32)
        scores = jnp.zeros((size, n), jnp.float32)
        for k in (k_a, k_b):
            seed_model = task.random_seed(k)
            params, scores = insert(params, scores, seed_model, score(seed_model), capacity)

        curve = []
        for _ in range(forward_passes):
            k_parents, k_cross, k_mut, key = jax.random.split(key, 4)
            a, b = niches.select_parents(k_parents, scores, capacity, config.alpha, config.use_attraction,
                                         reference=True)
            child = self.cross(k_cross, params[a], params[b]) if config.use_crossover else params[a]
            if config.mutation_std > 0:
                child = self.mutate(k_mut, child)
            params, scores = insert(params, scores, child, score(child), capacity)
            best = jnp.argmax(jnp.mean(scores, axis=1))
            curve.append(self.test_metric(params[best]))
        return params, scores, np.asarray(jax.device_get(curve), dtype=float)

"""Tasks from a user's own model and score function, and task plugins for the CLI.

:func:`custom_task` turns a pytree of parameters and a per-datapoint score
function into a :class:`Task`, so any Flax (or plain JAX) model can be evolved
or merged. :func:`load_task_factory` resolves ``--task module:function`` or
``--task path/to/file.py:function``: the function returns such a Task, and
``--task-arg KEY=VALUE`` options become its keyword arguments.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp

from m2n2_jax.errors import ConfigError, ScoreFunctionError
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.tasks.base import Task, metric_shapes


def custom_task(name: str, example_params, score_fn: Callable, metrics_fn: Callable | None = None, *,
                seed_std: float = 0.01, capacity=None, info: dict | None = None, layout_order=None,
                scoring_bytes: int = 0) -> Task:
    """A Task over models shaped like ``example_params``.

    score_fn(params) -> [N] per-datapoint scores on the data the search sees
        (higher is better, in [0, c_j]; e.g. correctness per example).
    metrics_fn(params) -> dict of scalars on held-out data, reported for each
        run's best member; its first entry is the headline metric of result
        files and plots (name it e.g. "test_accuracy"). Without it the
        headline is the best member's mean training score.
    seed_std: std of the N(0, seed_std^2) seeds drawn when evolving from scratch.
    layout_order: the leaves' order in the flat vector (default: :func:`~m2n2_jax.algorithm.flatten.natural_order`).
    scoring_bytes: memory one scoring call needs beyond its input and one copy of the model
        (:attr:`~m2n2_jax.tasks.base.Task.scoring_bytes`), for the memory estimate.
    """
    layout = VectorLayout.of(example_params, order=layout_order)
    shape = jax.eval_shape(score_fn, example_params)
    if not hasattr(shape, "shape") or len(shape.shape) != 1:
        raise ScoreFunctionError(
            f"task {name!r}: score_fn returns {getattr(shape, 'shape', type(shape).__name__)}, expected a vector "
            "[N] with one score per datapoint.")
    headline = "best_train_score"
    if metrics_fn is not None:
        names, shapes = metric_shapes(metrics_fn, example_params)
        if not isinstance(shapes, dict) or not shapes:
            raise ScoreFunctionError(f"task {name!r}: metrics_fn must return a non-empty dict of scalars "
                                     f"(got {type(shapes).__name__}).")
        bad = [k for k in names if getattr(shapes[k], "shape", None) != ()]
        if bad:
            raise ScoreFunctionError(f"task {name!r}: metrics {bad} are not scalars; return one number per metric.")
        headline = names[0]  # the first the function returns (eval_shape alone would sort them)

    def score_vector(x):
        return jnp.asarray(score_fn(layout.unravel(x)), jnp.float32)

    def metrics(x):
        return {} if metrics_fn is None else dict(metrics_fn(layout.unravel(x)))

    def random_seed(key):
        return jax.random.normal(key, (layout.size,), layout.dtype) * seed_std

    return Task(name=name, layout=layout, num_datapoints=int(shape.shape[0]), score_vector=score_vector,
                metrics=metrics, random_seed=random_seed, capacity=capacity, headline_metric=headline,
                scoring_bytes=int(scoring_bytes),
                info={"num_params": layout.size, "num_datapoints": int(shape.shape[0]), **(info or {})})


def is_plugin_spec(spec: str) -> bool:
    """True for 'module:function' or 'file.py:function' (built-in task names have no colon)."""
    return ":" in spec


def parse_task_args(pairs) -> dict:
    """KEY=VALUE strings to keyword arguments; values are read as JSON when they parse, else kept as text."""
    kwargs = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--task-arg {pair!r} is not KEY=VALUE with KEY a Python name; e.g. --task-arg hidden=64.")
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def load_task_factory(spec: str) -> Callable[..., Task]:
    """The function named by 'module:function' or 'path/to/file.py:function'."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"--task {spec!r}: write a plugin as module:function or path/to/file.py:function.")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise ConfigError(f"--task {spec!r}: file {target} does not exist.")
        module_name = "m2n2_task_plugin_" + os.path.splitext(os.path.basename(target))[0]
        loader = importlib.util.spec_from_file_location(module_name, target)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise ConfigError(f"--task {spec!r}: cannot import module {target!r} ({err}); install it or add its "
                              "directory to PYTHONPATH, or pass the file as path/to/file.py:function.") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--task {spec!r}: {target} has no function {attr!r}.")
    return factory


def takes_argument(factory: Callable, name: str) -> bool:
    """Whether ``factory`` has a parameter called ``name``."""
    import inspect

    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def plugin_task(spec: str, factory: Callable | None = None, **kwargs) -> Task:
    """Call the plugin's factory (loaded from ``spec`` unless given) with ``kwargs``; check that it made a Task.

    Arguments the factory does not take are refused in one line naming the ones it
    takes; an exception raised inside the factory is the plugin's own and propagates
    with its traceback (and a note saying which plugin raised it).
    """
    import inspect

    factory = factory or load_task_factory(spec)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C function: no signature to check against
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            takes = [n for n, p in signature.parameters.items()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            raise ConfigError(f"--task {spec!r}: {err}; it takes {', '.join(takes) or 'no arguments'} "
                              "(pass them as --task-arg KEY=VALUE).") from None
    try:
        task = factory(**kwargs)
    except Exception as err:
        err.add_note(f"m2n2: raised inside the task plugin {spec!r} (called with {sorted(kwargs) or 'no arguments'})"
                     "; the traceback above is the plugin's own code.")
        raise
    if not isinstance(task, Task):
        raise ConfigError(f"--task {spec!r} returned {type(task).__name__}, not a Task; build one with "
                          "m2n2_jax.tasks.custom_task(name, example_params, score_fn, metrics_fn).")
    return task

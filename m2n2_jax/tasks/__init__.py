"""Built-in tasks, by name."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Task
from .digits import digits_task
from .mnist import mnist5k_task, mnist_task

_ONLY_MODEL_OPTIONS = ("hidden", "matmul_precision")
TASKS = {
    "digits": lambda **kw: digits_task(**{k: v for k, v in kw.items() if k in _ONLY_MODEL_OPTIONS}),
    "mnist": lambda **kw: mnist_task("mnist", **kw),
    "fashion-mnist": lambda **kw: mnist_task("fashion-mnist", **kw),
    "mnist5k": lambda **kw: mnist5k_task(**{k: v for k, v in kw.items() if k in _ONLY_MODEL_OPTIONS}),
}


def get_task(name: str, **options) -> Task:
    """A built-in task by name; options (hidden, matmul_precision, data_dir, train_size) go to tasks that take them."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}.")
    return TASKS[name](**{k: v for k, v in options.items() if v is not None})


__all__ = ["Task", "TASKS", "get_task", "digits_task", "mnist_task", "mnist5k_task"]

"""Built-in tasks, by name."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Task
from .digits import digits_task

TASKS = {"digits": digits_task}


def get_task(name: str, **options) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}.")
    return TASKS[name](**options)


__all__ = ["Task", "TASKS", "get_task", "digits_task"]

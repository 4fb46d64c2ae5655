"""Built-in tasks, by name."""
from __future__ import annotations

from m2n2_jax.errors import ConfigError
from m2n2_jax.tasks.base import Task
from m2n2_jax.tasks.custom import custom_task, is_plugin_spec, plugin_task
from m2n2_jax.tasks.digits import digits_task
from m2n2_jax.tasks.mnist import mnist5k_task, mnist_task

_ONLY_MODEL_OPTIONS = ("hidden", "matmul_precision")
TASKS = {
    "digits": lambda **kw: digits_task(**{k: v for k, v in kw.items() if k in _ONLY_MODEL_OPTIONS}),
    "mnist": lambda **kw: mnist_task("mnist", **kw),
    "fashion-mnist": lambda **kw: mnist_task("fashion-mnist", **kw),
    "mnist5k": lambda **kw: mnist5k_task(**{k: v for k, v in kw.items() if k in _ONLY_MODEL_OPTIONS}),
}

# Plugins that ship with the package, by a short name.
PLUGIN_ALIASES = {"llm-exact-match": "m2n2_jax.llm.task:exact_match_task"}


def get_task(name: str, task_args: dict | None = None, **options) -> Task:
    """A built-in task by name, or a plugin 'module:function' / 'file.py:function' called with ``task_args``.

    options (hidden, matmul_precision, data_dir, train_size) go to the built-in tasks that take them.
    """
    options = {k: v for k, v in options.items() if v is not None}
    name = PLUGIN_ALIASES.get(name, name)
    if is_plugin_spec(name):
        if options:
            raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in sorted(options))} configure the "
                              f"built-in tasks; pass a plugin's settings as --task-arg KEY=VALUE.")
        return plugin_task(name, **(task_args or {}))
    if task_args:
        raise ConfigError(f"--task-arg is for task plugins (module:function); the built-in task {name!r} takes none.")
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}, or a plugin "
                          "module:function (see README, 'Bring your own model').")
    return TASKS[name](**options)


__all__ = ["Task", "TASKS", "PLUGIN_ALIASES", "get_task", "custom_task", "digits_task", "mnist_task", "mnist5k_task"]

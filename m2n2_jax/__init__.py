"""m2n2-jax: Model Merging of Natural Niches (M2N2) in JAX.

Evolve and merge neural networks with competition (niche fitness), attraction
(complementary mate choice) and SLERP crossover with an evolving split point.
"""
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult
from m2n2_jax.algorithm.config import M2N2Config, M2N2Params
from m2n2_jax.errors import ConfigError, DataError, M2N2Error, ScoreFunctionError, SeedModelError
from m2n2_jax.engine.evolution import evolve
from m2n2_jax.methods.registry import METHODS, method_config
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.algorithm.strategy import M2N2, ArchiveState
from m2n2_jax.tasks.base import Task
from m2n2_jax.tasks.custom import custom_task
from m2n2_jax.version import __version__  # noqa: F401 (the package's version)

__all__ = [
    "M2N2", "M2N2Config", "M2N2Params", "ArchiveState", "VectorLayout", "Task", "custom_task", "METHODS",
    "method_config", "evolve", "RunOptions", "RunResult", "M2N2Error", "ConfigError", "DataError",
    "ScoreFunctionError", "SeedModelError",
]

"""m2n2-jax: Model Merging of Natural Niches (M2N2) in JAX.

Evolve and merge neural networks with competition (niche fitness), attraction
(complementary mate choice) and SLERP crossover with an evolving split point.
"""
from .chunk_loop import RunOptions, RunResult
from .config import M2N2Config, M2N2Params
from .errors import ConfigError, DataError, M2N2Error, ScoreFunctionError, SeedModelError
from .evolution import evolve
from .methods import METHODS, method_config
from .flatten import VectorLayout
from .strategy import M2N2, ArchiveState
from .tasks.base import Task
from .tasks.custom import custom_task

__version__ = "0.1.0"

__all__ = [
    "M2N2", "M2N2Config", "M2N2Params", "ArchiveState", "VectorLayout", "Task", "custom_task", "METHODS",
    "method_config", "evolve", "RunOptions", "RunResult", "M2N2Error", "ConfigError", "DataError",
    "ScoreFunctionError", "SeedModelError",
]

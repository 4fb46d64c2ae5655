"""m2n2-jax: Model Merging of Natural Niches (M2N2) in JAX.

Evolve and merge neural networks with competition (niche fitness), attraction
(complementary mate choice) and SLERP crossover with an evolving split point.
"""
from .config import METHODS, M2N2Config, M2N2Params, method_config
from .errors import ConfigError, DataError, M2N2Error, ScoreFunctionError, SeedModelError
from .evolution import EvolutionResult, evolve
from .flatten import VectorLayout
from .strategy import M2N2, ArchiveState
from .tasks.base import Task
from .tasks.custom import custom_task

__version__ = "0.1.0"

__all__ = [
    "M2N2", "M2N2Config", "M2N2Params", "ArchiveState", "VectorLayout", "Task", "custom_task", "METHODS",
    "method_config", "evolve", "EvolutionResult", "M2N2Error", "ConfigError", "DataError",
    "ScoreFunctionError", "SeedModelError",
]

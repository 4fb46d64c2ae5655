"""The evosax strategies compared as baselines, by method name, and the settings they run with.

Kept apart from :mod:`m2n2_jax.methods.evosax_es` because importing evosax starts JAX's
backends: the method table reads this list without importing evosax, so the command line can
still choose the CPU device count and start a multi-host runtime first.
"""
from __future__ import annotations

import dataclasses

POPULATION = 20  # the paper's CMA-ES population: 20 forward passes per generation
START_STD = 0.01


@dataclasses.dataclass(frozen=True)
class ESSpec:
    """An evosax strategy with the settings used here (the method table lists them as methods)."""

    strategy: str                  # the evosax class: CMA_ES (evosax_es.LazyCMA_ES), Sep_CMA_ES, LM_MA_ES, Open_ES, SimpleGA
    about: str
    sigma: float = START_STD
    batched: bool = True           # all runs in one vmapped program (full CMA-ES: one run after another)
    population_based: bool = False  # starts from a population (SimpleGA), not a mean


# The strategies, by method name.
STRATEGIES: dict[str, ESSpec] = {
    "cma-es": ESSpec("CMA_ES", "full-covariance CMA-ES (evosax CMA_ES, lazy eigendecomposition), sigma 0.01 as "
                     "the paper", batched=False),
    "sep-cma-es": ESSpec("Sep_CMA_ES", "diagonal CMA-ES (evosax Sep_CMA_ES), sigma 0.01"),
    "lm-ma-es": ESSpec("LM_MA_ES", "limited-memory MA-ES (evosax LM_MA_ES, 33 direction vectors), sigma 0.01"),
    "open-es": ESSpec("Open_ES", "OpenAI-ES (evosax Open_ES), fixed sigma 0.01, Adam lr 0.003, antithetic "
                      "sampling, centred ranks"),
    "simple-ga": ESSpec("SimpleGA", "evosax SimpleGA: truncation (top 10 of 20), no crossover, Gaussian mutation "
                        "std 0.01 (M2N2's mutation)", population_based=True),
}

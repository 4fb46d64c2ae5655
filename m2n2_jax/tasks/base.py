"""What a task gives the engine: a layout, a score function, seeds and metrics."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from m2n2_jax.algorithm.flatten import VectorLayout


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A problem M2N2 can be run on, in flat-vector form.

    score_vector(x) -> [N] per-datapoint scores of the flat model x on the
        training set (what competition and attraction use).
    metrics(x) -> dict of scalars for one model (e.g. test accuracy); the
        runner reports them for the archive's best member.
    random_seed(key) -> [D] a seed model drawn from scratch.
    pretrained_seeds() -> [K, D] or None when the task has none.
    train_labels: [N] class labels of the training points (classification
        tasks; MAP-Elites derives its descriptors from them), else None.
    groups: optional :class:`groups.GroupSpec` of the flat vector; crossover
        then draws one split point and ratio per group.
    headline_metric: the metric that result files, tables and plots lead
        with. Left out, it is read from ``metrics``' keys: "test_accuracy"
        if there is one, else the first, else "best_train_score" (which every
        method logs), so it always names a metric the runs log.
    scoring_bytes: memory one ``score_vector`` call holds beyond its input
        and one copy of the model (activations, caches, logits, the data, any
        further copy of the weights), per scoring device; the memory estimate
        (:mod:`m2n2_jax.engine.memory`) adds it. 0 where it is negligible.
    """

    name: str
    layout: VectorLayout
    num_datapoints: int
    score_vector: Callable[[jax.Array], jax.Array]
    metrics: Callable[[jax.Array], dict]
    random_seed: Callable[[jax.Array], jax.Array]
    pretrained_seeds: Callable[[], jax.Array] | None = None
    capacity: jax.Array | None = None
    train_labels: jax.Array | None = None
    info: dict = dataclasses.field(default_factory=dict)
    headline_metric: str | None = None
    groups: Any = None
    scoring_bytes: int = 0

    def __post_init__(self):
        if self.headline_metric is None:
            object.__setattr__(self, "headline_metric", default_headline(self.metrics, self.layout))

    @property
    def num_params(self) -> int:
        return self.layout.size


def metric_shapes(metrics: Callable, example) -> tuple[list[str], object]:
    """(names in the order ``metrics`` returns them, their shapes), traced, not run.

    ``jax.eval_shape`` alone would sort the names (dicts are pytrees with sorted keys).
    """
    names = []

    def probe(x):
        out = metrics(x)
        if isinstance(out, dict):
            names[:] = list(out)
        return out

    return names, jax.eval_shape(probe, example)


def default_headline(metrics: Callable, layout: VectorLayout) -> str:
    """The metric to lead with: test_accuracy if ``metrics`` has it, else its first, else best_train_score."""
    names, _ = metric_shapes(metrics, jax.ShapeDtypeStruct((layout.size,), layout.dtype))
    if "test_accuracy" in names:
        return "test_accuracy"
    return names[0] if names else "best_train_score"

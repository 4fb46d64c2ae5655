"""Budget planning: where a run logs its metrics and how its steps are cut into compiled chunks.

A run of ``forward_passes`` evaluations advances in steps of ``fp_per_step``
(B children, or one generation of an evolution strategy). It logs every
``steps_per_log`` steps and always at the end, so the log points never depend
on the divisors of the budget: a prime budget gets about 500 log points like
any other, its last interval simply shorter. Pure functions, no JAX.
"""
from __future__ import annotations

import dataclasses
import math

from m2n2_jax.errors import ConfigError

TARGET_LOGS = 500  # log points of a run when --log-every is not given (about)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Log points of a budget: every ``steps_per_log`` steps and at the last step."""

    forward_passes: int
    fp_per_step: int
    steps_per_log: int

    @property
    def steps(self) -> int:
        return self.forward_passes // self.fp_per_step

    @property
    def log_every(self) -> int:
        """Forward passes between regular log points."""
        return self.steps_per_log * self.fp_per_step

    @property
    def full_logs(self) -> int:
        """Log intervals of ``steps_per_log`` steps."""
        return self.steps // self.steps_per_log

    @property
    def last_steps(self) -> int:
        """Steps of the final, shorter interval (0: none, the budget ends on a regular log point)."""
        return self.steps % self.steps_per_log

    @property
    def num_logs(self) -> int:
        """Log points after the start."""
        return self.full_logs + (self.last_steps > 0)

    def fp_at(self, logs: int) -> int:
        """Forward passes per run done after ``logs`` log intervals."""
        return min(logs * self.steps_per_log, self.steps) * self.fp_per_step

    @property
    def log_points(self) -> list[int]:
        """Forward passes at every log point, 0 and the budget included."""
        return [self.fp_at(i) for i in range(self.num_logs + 1)]

    def chunks(self, done_logs: int, chunk_forward_passes: int) -> list[tuple[int, int]]:
        """(log intervals, steps per interval) of each chunk still to run after ``done_logs``.

        Regular intervals go in chunks of about ``chunk_forward_passes``: a divisor
        of their count when one is close (one compiled program), else equal chunks
        and a shorter last one; the final short interval, if any, is a chunk of its own.
        """
        size = chunk_size(self.full_logs, math.ceil(chunk_forward_passes / self.log_every))
        out, done = [], min(done_logs, self.full_logs)
        while done < self.full_logs:
            n = min(size, self.full_logs - done)
            out.append((n, self.steps_per_log))
            done += n
        if self.last_steps and done_logs <= self.full_logs:
            out.append((1, self.last_steps))
        return out


def chunk_size(count: int, target: int) -> int:
    """Intervals per chunk: the largest divisor of ``count`` up to ``target`` if it is at least
    half the target (all chunks then share one compiled program), else ``target``."""
    target = max(1, min(target, count))
    divisor = max(d for d in range(1, target + 1) if count % d == 0)
    return divisor if 2 * divisor >= target else target


def plan_budget(forward_passes: int, fp_per_step: int, log_every: int | None = None) -> Plan:
    """The plan of a run, validating the budget and ``log_every`` (forward passes between logs).

    Without ``log_every`` the run logs every max(1, steps // 500) steps (and at the end).
    """
    if not isinstance(forward_passes, int) or isinstance(forward_passes, bool) or forward_passes <= 0:
        raise ConfigError(f"the forward-pass budget must be a positive integer (got {forward_passes!r}).")
    batch = fp_per_step
    if forward_passes % batch:
        raise ConfigError(
            f"the forward-pass budget {forward_passes} is not a multiple of the batch of "
            f"{batch} children per step; use {forward_passes - forward_passes % batch or batch} "
            f"or {forward_passes + batch - forward_passes % batch}.")
    steps = forward_passes // batch
    if log_every is None:
        return Plan(forward_passes, batch, max(1, steps // TARGET_LOGS))
    if log_every <= 0 or log_every % batch:
        raise ConfigError(f"--log-every {log_every} must be a positive multiple of the batch ({batch} forward "
                          f"passes per step); e.g. --log-every {batch * max(1, log_every // batch)}.")
    return Plan(forward_passes, batch, min(log_every // batch, steps))

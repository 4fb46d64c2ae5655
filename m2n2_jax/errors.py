"""Exception types of m2n2-jax.

Every error a user can cause derives from :class:`M2N2Error`, so the CLI can
turn it into a one-line message (exit status 2) instead of a traceback.
"""


class M2N2Error(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(M2N2Error, ValueError):
    """An invalid setting (archive size, budget, method name, ...)."""


class SeedModelError(M2N2Error, ValueError):
    """Seed models that cannot share one archive (structure, shape, dtype)."""


class ScoreFunctionError(M2N2Error, ValueError):
    """A score function whose output has the wrong shape or dtype."""


class DataError(M2N2Error, OSError):
    """Missing or malformed data files."""

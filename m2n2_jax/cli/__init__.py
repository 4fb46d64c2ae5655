"""The ``m2n2`` command line: a thin shell over the library.

One module per command (evolve, merge, compare, bench, chat), each with ``add_parser(sub)``
and ``run(args)``; the options evolve and merge share are declared once, as settings
dataclasses (:mod:`m2n2_jax.cli.options`). Errors a user can fix (M2N2Error and argument
mistakes) end with a one-line message and exit status 2; Ctrl-C saves a checkpoint and exits
with 130.
"""
from m2n2_jax.cli.app import build_parser, main

__all__ = ["build_parser", "main"]

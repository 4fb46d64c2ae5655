"""Experiments built on m2n2_jax: each folder is one experiment with its code and entry point.

Run them from the repository root as modules, e.g. ``python -m experiments.smollm2.merge``;
the scripts at this folder's top level run as ``python experiments/NAME.py`` with m2n2_jax installed
(``pip install -e .``) or as ``python -m experiments.NAME``.
"""

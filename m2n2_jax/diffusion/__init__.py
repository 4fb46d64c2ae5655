"""A small text-to-image flow-matching model of 8x8 digits, for merging with M2N2.

Modules: ``prompts`` (two prompt languages, one shared tokenizer),
``model`` (text encoder, velocity network, deterministic sampler),
``classifier`` (the fixed digits classifier that scores images),
``train`` (base model and per-language fine-tunes), ``task`` (the M2N2 task:
per-prompt scores over flat parameter vectors), ``merge`` (baselines and
the check that a merged vector is a piecewise combination of its seeds),
``pipeline`` (the whole experiment) and ``report`` (table and image grid).
"""

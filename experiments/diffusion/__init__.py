"""A small text-to-image flow-matching model of 8x8 digits, merged as the paper's section 4.3.

Modules: ``prompts`` (two prompt languages, one shared tokenizer),
``model`` (text encoder with token states, denoiser with cross-attention,
deterministic sampler), ``classifier`` (the judge: feature similarity and FID,
standing in for CLIP), ``train`` (bilingual base, Japanese and English
fine-tunes), ``task`` (caption/real-image datapoints and metrics on the
denoiser's flat vector, encoder fixed; ``merge_task`` hands it to the M2N2
engine, which subtracts the worst score in the population), ``baselines`` (incl. CMA-ES over per-layer
coefficients, and the check that a vector is a merge of its seeds),
``pipeline`` (the whole experiment), ``report`` (table and image grid) and
``merge`` (the entry point: ``python -m experiments.diffusion.merge``).
"""

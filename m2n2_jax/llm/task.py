"""A Task for merging Llama checkpoints: exact match of answers on a JSONL data set.

``m2n2 merge DIR_A DIR_B --task llm-exact-match --task-arg data=fit.jsonl``
scores every child on the examples of ``data`` (one JSON object per line,
``{"prompt": ..., "answer": ...}``): 1 when teacher forcing reproduces every
answer token and the end-of-sequence token, else 0. ``test_data`` adds the
held-out exact match as the headline metric.

Tokenizers: the project's word tokenizer (``tokenizer.json`` of type
``m2n2-word``, as ``python -m experiments.tiny_llm.merge`` writes it), any Hugging Face
fast tokenizer (``tokenizer.json``, read with the ``tokenizers`` package:
``pip install -e '.[llm]'``) or the one in a GGUF file's metadata. With a Hugging
Face tokenizer prompt and answer are tokenized together (:mod:`m2n2_jax.llm.hf_tokenizer`),
so exact match here is greedy generation's exact match.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp

from m2n2_jax.errors import DataError
from m2n2_jax.tasks.custom import custom_task
from m2n2_jax.llm import checkpoint
from m2n2_jax.llm import model as llama
from m2n2_jax.llm import scoring
from m2n2_jax.llm.data import encode
from m2n2_jax.llm.hf_tokenizer import load_tokenizer


def read_examples(path: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a JSONL file, checked line by line."""
    if not os.path.isfile(path):
        raise DataError(f"data file {path} does not exist; pass a JSONL file with one "
                        '{"prompt": ..., "answer": ...} object per line.')
    examples = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f"{path}, line {number}: not JSON ({err.msg}).") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
                raise DataError(f'{path}, line {number}: expected {{"prompt": "...", "answer": "..."}} with string values.')
            examples.append((row["prompt"], row["answer"]))
            if limit is not None and len(examples) == limit:
                break
    if not examples:
        raise DataError(f"{path} holds no examples.")
    return examples


def exact_match_task(model: str, data: str, test_data: str | None = None, max_examples: int | None = None,
                     batch_size: int = 64, separator: str = " ", matmul: str = "float32"):
    """Merge Llama-family checkpoints shaped like the one in ``model`` on the examples of ``data``.

    model: a Hugging Face directory (config.json, safetensors, tokenizer.json) or a .gguf file;
        its architecture and tokenizer define the task (the models being merged must share them).
    data: JSONL examples the search scores children on (one score per example).
    test_data: held-out JSONL examples; their exact match is the headline metric.
    max_examples: use only the first N examples of each file.
    batch_size: examples per forward call (bounds memory for long data sets).
    separator: put between prompt and answer when neither has whitespace there (default one space;
        '' joins them as written). Prompt and answer are tokenized together.
    matmul: "float32" (default), "bfloat16" (bfloat16 operands, float32 accumulation: faster on GPUs, TPUs and
        CPUs with AMX / AVX512-BF16, but it flips some exact-match scores: docs/results/llm-speed) or "auto"
        (bfloat16 where the backend runs it faster, else float32).

    Scoring computes the logits only at answer tokens, batches rows of similar length and runs the prompt
    prefix all examples share once per child (:mod:`m2n2_jax.llm.scoring`).
    """
    if not (os.path.isdir(model) or (model.lower().endswith(".gguf") and os.path.isfile(model))):
        raise DataError(f"model {model} is neither a directory nor a .gguf file; pass one of the models being "
                        "merged, e.g. --task-arg model=path/to/model.")
    config, params = checkpoint.load(model)
    tokenizer = load_tokenizer(model, separator)
    eos_ids = tuple(getattr(tokenizer, "eos_ids", ()))
    train = encode(tokenizer, read_examples(data, max_examples))
    test = encode(tokenizer, read_examples(test_data, max_examples)) if test_data else None

    plans = {name: scoring.plan_rows(b.tokens, b.targets, batch_size)
             for name, b in (("train", train), ("test", test)) if b is not None}
    scorers = {name: scoring.exact_match_scorer(config, plan, eos_ids, matmul=matmul) for name, plan in plans.items()}
    train_scores, test_scores = scorers["train"], scorers.get("test")
    # the scorer's own copy of the weights beyond the child (measured: docs/memory.md) and its working set
    scoring_bytes = 4 * llama.num_params(params) + max(scoring.working_bytes(config, p) for p in plans.values())
    metrics = None if test is None else (lambda p: {"test_exact_match": jnp.mean(test_scores(p))})
    return custom_task("llm-exact-match", params, train_scores, metrics,
                       layout_order=llama.checkpoint_order(params),
                       info={"model": f"{config.model_type} {config.num_hidden_layers} layers, hidden {config.hidden_size}",
                             "data": data, "test_data": test_data,  # as given: results files travel
                             "train_size": len(train), "test_size": 0 if test is None else len(test),
                             "matmul": llama.resolve_matmul(matmul)},
                       scoring_bytes=scoring_bytes)

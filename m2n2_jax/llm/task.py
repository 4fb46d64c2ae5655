"""A Task for merging Llama checkpoints: exact match of answers on a JSONL data set.

``m2n2 merge DIR_A DIR_B --task llm-exact-match --task-arg data=fit.jsonl``
scores every child on the examples of ``data`` (one JSON object per line,
``{"prompt": ..., "answer": ...}``): 1 when teacher forcing reproduces every
answer token and the end-of-sequence token, else 0. ``test_data`` adds the
held-out exact match as the headline metric.

Tokenizers: the project's word tokenizer (``tokenizer.json`` of type
``m2n2-word``, as ``experiments/llm_merge.py`` writes it) or any Hugging Face
fast tokenizer (``tokenizer.json``, read with the ``tokenizers`` package:
``pip install -e '.[llm]'``).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DataError
from ..tasks.custom import custom_task
from . import checkpoint, generate
from .data import Batch, encode


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


class HFTokenizer:
    """A Hugging Face fast tokenizer with the ids that scoring needs."""

    def __init__(self, directory: str, bos_id: int | None, eos_id: int, pad_id: int):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError(f"{directory}/tokenizer.json is a Hugging Face tokenizer; reading it needs the "
                            "tokenizers package: pip install -e '.[llm]' (or pip install tokenizers).") from None
        self._tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids


def load_tokenizer(directory: str):
    """The project's word tokenizer or a Hugging Face tokenizer.json, with bos / eos / pad ids."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise DataError(f"no tokenizer.json in {directory}; the model directory needs its tokenizer.")
    with open(path) as f:
        data = json.load(f)
    if data.get("type") == "m2n2-word":
        from .tokenizer import WordTokenizer

        return WordTokenizer(tuple(data["vocab"]))
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is None:
        raise DataError(f"{directory}/config.json has no eos_token_id; scoring needs to know where answers end.")
    pad = config.get("pad_token_id")
    return HFTokenizer(directory, config.get("bos_token_id"), int(eos), int(eos if pad is None else pad))


def exact_match_task(model: str, data: str, test_data: str | None = None, max_examples: int | None = None,
                     batch_size: int = 64):
    """Merge Llama checkpoints shaped like the one in ``model`` on the examples of ``data``.

    model: a Hugging Face Llama directory (config.json, safetensors, tokenizer.json);
        its architecture and tokenizer define the task (the models being merged must share them).
    data: JSONL examples the search scores children on (one score per example).
    test_data: held-out JSONL examples; their exact match is the headline metric.
    max_examples: use only the first N examples of each file.
    batch_size: examples per forward call (bounds memory for long data sets).
    """
    if not os.path.isdir(model):
        raise DataError(f"model {model} is not a directory; pass the Hugging Face directory of one of the models "
                        "being merged, e.g. --task-arg model=path/to/model.")
    config, params = checkpoint.load(model)
    tokenizer = load_tokenizer(model)
    train = encode(tokenizer, read_examples(data, max_examples))
    test = encode(tokenizer, read_examples(test_data, max_examples)) if test_data else None

    def exact_match(p, batch: Batch):
        n = len(batch)
        size = min(batch_size, n)
        pad = (-n) % size
        tokens = jnp.asarray(np.concatenate([batch.tokens, batch.tokens[:pad]]))
        targets = jnp.asarray(np.concatenate([batch.targets, batch.targets[:pad]]))
        scores = jax.lax.map(lambda tt: generate.answer_scores(config, p, tt[0], tt[1])[0],
                             (tokens.reshape(-1, size, tokens.shape[1]), targets.reshape(-1, size, targets.shape[1])))
        return scores.reshape(-1)[:n]

    metrics = None if test is None else (lambda p: {"test_exact_match": jnp.mean(exact_match(p, test))})
    return custom_task("llm-exact-match", params, lambda p: exact_match(p, train), metrics,
                       info={"model": f"Llama {config.num_hidden_layers} layers, hidden {config.hidden_size}",
                             "data": data, "test_data": test_data,  # as given: results files travel
                             "train_size": len(train), "test_size": 0 if test is None else len(test)})

"""Tokenised (prompt, answer) examples for scoring and training Llama models: :class:`Batch` and :func:`encode`.

Works with the project's word tokenizer (:mod:`m2n2_jax.llm.word_tokenizer`) and with
Hugging Face tokenizers (:mod:`m2n2_jax.llm.hf_tokenizer`), which tokenize prompt and
answer together.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from m2n2_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Batch:
    """Tokenised examples, right-padded to one length L.

    tokens [N, L]: <bos> prompt answer <eos> <pad>...
    prompt_lengths [N]: tokens up to and including the prompt's last word.
    targets [N, L]: 1 where the token is part of the answer (or its <eos>),
        i.e. what the model must predict from the position before.
    """

    tokens: np.ndarray
    prompt_lengths: np.ndarray
    targets: np.ndarray

    def __len__(self):
        return self.tokens.shape[0]

    def take(self, index) -> "Batch":
        return Batch(self.tokens[index], self.prompt_lengths[index], self.targets[index])


def encode(tokenizer, examples, length: int | None = None) -> Batch:
    """Tokenise (prompt, answer) pairs into a :class:`Batch`.

    ``tokenizer``: anything with encode(text) -> ids and bos_id / eos_id / pad_id
    (a bos_id of None adds no begin token). A tokenizer with ``split(prompt, answer)``
    (Hugging Face tokenizers, :mod:`m2n2_jax.llm.hf_tokenizer`) tokenizes the two together
    and finds the answer's tokens by character offsets.
    """
    rows, prompt_lengths, answer_lengths = [], [], []
    for prompt, answer in examples:
        if hasattr(tokenizer, "split"):
            p, a = tokenizer.split(prompt, answer)
            a = a + [tokenizer.eos_id]
        else:
            p = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(prompt)
            a = tokenizer.encode(answer) + [tokenizer.eos_id]
        rows.append(p + a)
        prompt_lengths.append(len(p))
        answer_lengths.append(len(a))
    longest = max(len(r) for r in rows)
    length = longest if length is None else length
    if length < longest:
        raise ConfigError(f"sequence length {length} is shorter than the longest example ({longest} tokens).")
    tokens = np.full((len(rows), length), tokenizer.pad_id, np.int32)
    targets = np.zeros((len(rows), length), np.float32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
        targets[i, prompt_lengths[i]:len(row)] = 1
    return Batch(tokens, np.asarray(prompt_lengths, np.int32), targets)


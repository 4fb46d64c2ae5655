"""A word-level tokenizer owned by the project, stored next to the checkpoint.

Text is split on whitespace; every word of the generated tasks (numbers
included) is one token, so answers are one or two tokens long.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from m2n2_jax.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    vocab: tuple[str, ...]

    @classmethod
    def build(cls, words) -> "WordTokenizer":
        """Specials first, then the distinct words sorted (deterministic)."""
        return cls(SPECIALS + tuple(sorted(set(words) - set(SPECIALS))))

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def encode(self, text: str) -> list[int]:
        index = self.index
        return [index.get(w, 3) for w in text.split()]

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        words = []
        for i in np.asarray(ids).tolist():
            if stop_at_eos and i == self.eos_id:
                break
            if i != self.pad_id:
                words.append(self.vocab[i])
        return " ".join(words)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "tokenizer.json"), "w") as f:
            json.dump({"type": "m2n2-word", "vocab": list(self.vocab)}, f, indent=0)

    @classmethod
    def load(cls, directory: str) -> "WordTokenizer":
        path = os.path.join(directory, "tokenizer.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"no tokenizer.json in {directory}; this loader reads the project's word tokenizer.") from None
        if data.get("type") != "m2n2-word":
            raise DataError(f"{path} is not an m2n2 word tokenizer (type {data.get('type')!r}).")
        return cls(tuple(data["vocab"]))

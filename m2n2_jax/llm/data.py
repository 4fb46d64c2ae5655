"""Deterministic generated tasks: arithmetic word problems and a shop agent.

Each example is (prompt, answer) text. The generators are pure functions of a
seed (numpy Generator), so the same seed gives the same data everywhere.

- math: three or four steps of adding and taking away numbers up to 12,
  "ann has 3 pens . she gets 4 more . she gives away 2 . how many pens now ?" -> "5".
- agent: WebShop-like; a goal and a page of items of distinct kinds; the right
  action is "click [N]" for the item of the goal's kind if its colour matches too,
  else "next page".
"""
from __future__ import annotations

import dataclasses

import numpy as np

from m2n2_jax.errors import ConfigError
from m2n2_jax.llm.tokenizer import WordTokenizer

NAMES = ("ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal")
OBJECTS = ("pens", "apples", "cards", "coins", "books", "cups")
COLOURS = ("red", "blue", "green", "black", "white", "pink")
KINDS = ("shoes", "hat", "shirt", "bag", "lamp", "mug")
MAX_NUMBER = 60
NUM_ITEMS = 3


def math_example(rng: np.random.Generator) -> tuple[str, str]:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    value = int(rng.integers(1, 13))
    words = [name, "has", str(value), obj, "."]
    for _ in range(int(rng.integers(3, 5))):
        amount = int(rng.integers(1, 13))
        if rng.random() < 0.5 or value < amount:
            value += amount
            words += ["gets", str(amount), "more", "."]
        else:
            value -= amount
            words += ["gives", "away", str(amount), "."]
    words += ["how", "many", obj, "now", "?"]
    return " ".join(words), str(value)


def agent_example(rng: np.random.Generator) -> tuple[str, str]:
    colour, kind = rng.choice(COLOURS), rng.choice(KINDS)
    kinds = [str(k) for k in rng.permutation(KINDS)[:NUM_ITEMS]]
    if kind not in kinds:
        kinds[int(rng.integers(0, NUM_ITEMS))] = str(kind)
    slot = kinds.index(kind)
    available = rng.random() < 0.8
    words = ["goal", ":", "buy", colour, kind, ";", "page", ":"]
    for i, k in enumerate(kinds):
        c = colour if (i == slot and available) else rng.choice([x for x in COLOURS if x != colour or i != slot])
        words += [f"[{i + 1}]", str(c), k]
    words += [";", "action", ":"]
    return " ".join(words), (f"click [{slot + 1}]" if available else "next page")


GENERATORS = {"math": math_example, "agent": agent_example}


def make_examples(task: str, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` examples of ``task`` drawn from numpy's PCG64 with ``seed``."""
    if task not in GENERATORS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(GENERATORS)}.")
    rng = np.random.default_rng(seed)
    return [GENERATORS[task](rng) for _ in range(count)]


def make_splits(task: str, train: int, test: int, seed: int) -> dict[str, list]:
    """Train and held-out test examples; test prompts never appear in train."""
    examples = make_examples(task, train, seed)
    seen = {p for p, _ in examples}
    rng_seed = seed + 10_000
    held_out: list = []
    while len(held_out) < test:
        for p, a in make_examples(task, test, rng_seed):
            if p not in seen and len(held_out) < test:
                seen.add(p)
                held_out.append((p, a))
        rng_seed += 1
    return {"train": examples, "test": held_out}


def vocabulary() -> list[str]:
    """Every word the generators can produce."""
    words = {".", "?", ":", ";", "has", "gets", "more", "gives", "away", "how", "many", "now",
             "goal", "buy", "page", "action", "click", "next"}
    words |= set(NAMES) | set(OBJECTS) | set(COLOURS) | set(KINDS)
    words |= {str(i) for i in range(MAX_NUMBER + 1)} | {f"[{i + 1}]" for i in range(NUM_ITEMS)}
    return sorted(words)


def make_tokenizer() -> WordTokenizer:
    return WordTokenizer.build(vocabulary())


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
    (Hugging Face tokenizers, :mod:`m2n2_jax.llm.text`) tokenizes the two together
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


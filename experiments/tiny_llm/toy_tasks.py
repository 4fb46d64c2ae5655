"""The tiny-model experiment's generated tasks: arithmetic word problems and a shop agent.

Each example is (prompt, answer) text. The generators are pure functions of a
seed (numpy Generator), so the same seed gives the same data everywhere.

- math: three or four steps of adding and taking away numbers up to 12,
  "ann has 3 pens . she gets 4 more . she gives away 2 . how many pens now ?" -> "5".
- agent: WebShop-like; a goal and a page of items of distinct kinds; the right
  action is "click [N]" for the item of the goal's kind if its colour matches too,
  else "next page".
"""
from __future__ import annotations

import numpy as np

from m2n2_jax.errors import ConfigError
from m2n2_jax.llm.word_tokenizer import WordTokenizer

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

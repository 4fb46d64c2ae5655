"""Multi-step arithmetic word problems with a worked solution and an integer answer.

Problems come from a handful of templates (shopping, ages, distances, sharing,
savings, reading, baking), each with 2 to 4 operations on small integers, so
that a 135M-parameter model can learn the format and the arithmetic. The target
is a short worked solution, one equation per operation, ending in the fixed
phrase ``The answer is N.`` (:data:`ANSWER_PHRASE`), e.g.

    "4 * 3 = 12. 12 + 5 = 17. 50 - 17 = 33. The answer is 33."

Splits are drawn from one deterministic stream per seed: the stream's problems go
to test first, then fitness, then selection, then train, each kept only when
neither its question nor its worked solution has been drawn before. No question
and no worked solution is in two splits (the same solution under other names
would let fine-tuning memorise a held-out answer), and the test split does not
change when train grows.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from m2n2_jax.errors import ConfigError

ANSWER_PHRASE = "The answer is"
SPLITS = ("train", "fitness", "selection", "test")
DEFAULT_SIZES = {"train": 2000, "fitness": 100, "selection": 100, "test": 200}
NAMES = ("Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Ana", "Ben", "Lily")


@dataclasses.dataclass(frozen=True)
class Problem:
    """prompt: the question; target: the worked solution ending in ``The answer is N.``; answer: N."""

    prompt: str
    target: str
    answer: int


def _solution(steps: list[tuple[int, str, int, int]]) -> tuple[str, int]:
    """Worked solution text from (a, op, b, result) steps; checks every step's arithmetic."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    parts = []
    for a, op, b, result in steps:
        assert ops[op](a, b) == result and (op != "/" or a % b == 0) and result >= 0, (a, op, b, result)
        parts.append(f"{a} {op} {b} = {result}.")
    answer = steps[-1][3]
    return " ".join(parts) + f" {ANSWER_PHRASE} {answer}.", answer


def _int(rng, low, high) -> int:
    """An integer in [low, high] inclusive."""
    return int(rng.integers(low, high + 1))


def _pick(rng, options):
    """One element of ``options`` (any type; numpy's choice would turn tuples into arrays)."""
    return options[int(rng.integers(len(options)))]


def _shopping(rng):
    name = _pick(rng, NAMES)
    item, price = _pick(rng, [("notebooks", 3), ("pens", 2), ("apples", 1), ("books", 6), ("cups", 4)])
    count, price = _int(rng, 2, 6), _int(rng, price, price + 4)
    steps, total = [(count, "*", price, count * price)], count * price
    text = f"{name} buys {count} {item} at {price} dollars each"
    if rng.random() < 0.6:
        extra = _int(rng, 2, 9)
        text += f" and a bag for {extra} dollars"
        steps.append((total, "+", extra, total + extra))
        total += extra
    note = next(n for n in (20, 50, 100) if n > total)
    text += f". {name} pays with a {note}-dollar note."
    steps.append((note, "-", total, note - total))
    if rng.random() < 0.4:
        friends = _int(rng, 2, 4)
        change = note - total
        if change % friends == 0 and change > 0:
            text += f" The change is shared equally among {friends} friends. How many dollars does each friend get?"
            steps.append((change, "/", friends, change // friends))
            return text, steps
    return text + " How much change does " + name + " get, in dollars?", steps


def _ages(rng):
    name = _pick(rng, NAMES)
    age, older = _int(rng, 3, 12), _int(rng, 2, 9)
    sister = age + older
    steps = [(age, "+", older, sister)]
    text = f"{name} is {age} years old. {name}'s sister is {older} years older."
    if rng.random() < 0.5:
        times = _int(rng, 2, 4)
        parent = sister * times
        text += f" Their mother is {times} times as old as the sister."
        steps.append((sister, "*", times, parent))
        if rng.random() < 0.5:
            later = _int(rng, 2, 10)
            text += f" How old will the mother be in {later} years?"
            steps.append((parent, "+", later, parent + later))
        else:
            text += " How old is the mother?"
    else:
        later = _int(rng, 2, 10)
        text += f" How old will the sister be in {later} years?"
        steps.append((sister, "+", later, sister + later))
    return text, steps


def _distance(rng):
    name = _pick(rng, NAMES)
    speed, hours = _int(rng, 3, 15), _int(rng, 2, 5)
    first = speed * hours
    steps = [(speed, "*", hours, first)]
    text = f"{name} cycles at {speed} km per hour for {hours} hours"
    more = _int(rng, 2, 20)
    text += f", then walks {more} km more."
    steps.append((first, "+", more, first + more))
    total = first + more
    if rng.random() < 0.5:
        text += " The trip is done again on the way back. How many km is that in all?"
        steps.append((total, "*", 2, total * 2))
    else:
        text += " How many km does " + name + " travel in total?"
    return text, steps


def _sharing(rng):
    name = _pick(rng, NAMES)
    friends, each = _int(rng, 2, 6), _int(rng, 2, 9)
    bags = _int(rng, 2, 5)
    total = friends * each
    extra = total % bags  # bags of equal size, plus some loose sweets, add up to total
    per_bag = (total - extra) // bags
    if per_bag < 1:
        return _sharing(rng)
    steps = [(bags, "*", per_bag, bags * per_bag)]
    text = f"{name} has {bags} bags with {per_bag} sweets in each bag"
    if extra:
        text += f" and {extra} loose sweets"
        steps.append((bags * per_bag, "+", extra, total))
    text += f". {name} shares all the sweets equally among {friends} friends. How many sweets does each friend get?"
    steps.append((total, "/", friends, each))
    return text, steps


def _savings(rng):
    name = _pick(rng, NAMES)
    weekly, weeks = _int(rng, 3, 12), _int(rng, 2, 6)
    saved = weekly * weeks
    steps = [(weekly, "*", weeks, saved)]
    text = f"{name} saves {weekly} dollars every week for {weeks} weeks."
    if rng.random() < 0.5:
        gift = _int(rng, 5, 20)
        text += f" Grandma adds {gift} dollars."
        steps.append((saved, "+", gift, saved + gift))
        saved += gift
    spend = _int(rng, 1, saved - 1)
    text += f" Then {name} spends {spend} dollars on a game."
    steps.append((saved, "-", spend, saved - spend))
    if rng.random() < 0.5:
        chores = _int(rng, 2, 15)
        text += f" Later {name} earns {chores} dollars for chores. How many dollars does {name} have now?"
        steps.append((saved - spend, "+", chores, saved - spend + chores))
    else:
        text += " How many dollars are left?"
    return text, steps


def _reading(rng):
    name = _pick(rng, NAMES)
    per_day, days = _int(rng, 4, 15), _int(rng, 2, 6)
    read = per_day * days
    pages = read + _int(rng, 5, 60)
    steps = [(per_day, "*", days, read), (pages, "-", read, pages - read)]
    text = (f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days. "
            "How many pages are left to read?")
    return text, steps


def _baking(rng):
    name = _pick(rng, NAMES)
    trays, per_tray = _int(rng, 2, 5), _int(rng, 4, 12)
    baked = trays * per_tray
    eaten = _int(rng, 1, min(9, baked - 1))
    left = baked - eaten
    steps = [(trays, "*", per_tray, baked), (baked, "-", eaten, left)]
    text = f"{name} bakes {trays} trays of {per_tray} cookies and eats {eaten} of them."
    box = next((b for b in (2, 3, 4, 5, 6) if left % b == 0 and left // b > 1), None)
    if box is not None and rng.random() < 0.7:
        text += f" The rest are packed in boxes of {box}. How many boxes are filled?"
        steps.append((left, "/", box, left // box))
    else:
        text += " How many cookies are left?"
    return text, steps


TEMPLATES = (_shopping, _ages, _distance, _sharing, _savings, _reading, _baking)


def make_problem(rng: np.random.Generator) -> Problem:
    """One problem drawn from ``rng`` (a template, then its numbers)."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text, steps = template(rng)
    target, answer = _solution(steps)
    return Problem(text, target, answer)


def make_splits(seed: int = 0, train: int = DEFAULT_SIZES["train"], fitness: int = DEFAULT_SIZES["fitness"],
                selection: int = DEFAULT_SIZES["selection"],
                test: int = DEFAULT_SIZES["test"]) -> dict[str, list[Problem]]:
    """{"train", "fitness", "selection", "test"}: problems deterministic in ``seed``, no question and no worked
    solution in two places.

    The stream fills test, then fitness, selection and train (test does not depend on the other sizes).
    """
    sizes = {"test": test, "fitness": fitness, "selection": selection, "train": train}
    for name, size in sizes.items():
        if int(size) != size or size < 0:
            raise ConfigError(f"math split {name} size must be a non-negative integer, got {size!r}.")
    rng = np.random.default_rng([seed, 13])
    seen, out = set(), {name: [] for name in sizes}
    total, draws = sum(sizes.values()), 0
    for name, size in sizes.items():
        while len(out[name]) < size:
            problem = make_problem(rng)
            draws += 1
            if draws > 50 * total + 1000:
                raise ConfigError(f"cannot draw {total} distinct math problems; ask for fewer.")
            if problem.prompt not in seen and problem.target not in seen:
                seen.update((problem.prompt, problem.target))
                out[name].append(problem)
    return {name: out[name] for name in SPLITS}


def problems(split: str, seed: int = 0, limit: int | None = None, **sizes) -> list[Problem]:
    """The problems of one split (default sizes :data:`DEFAULT_SIZES`), the first ``limit`` if given."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    chosen = make_splits(seed, **sizes)[split]
    return chosen if limit is None else chosen[:limit]


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def _to_int(number: str) -> int | None:
    number = number.replace(",", "")
    try:
        value = float(number)
    except ValueError:
        return None
    return int(value) if value == int(value) else None


def extract_answer(text: str) -> int | None:
    """The integer a model's answer gives: the number after the last "answer is", else the last number.

    Thousands separators are dropped ("1,200" -> 1200); a number with a non-zero fraction
    ("2.5") is no integer answer (None); "12.0" counts as 12. None when there is no number.
    """
    if not isinstance(text, str):
        return None
    found = list(re.finditer(r"answer\s+is\s*:?\s*\$?\s*(" + _NUMBER + ")", text, re.IGNORECASE))
    if found:
        return _to_int(found[-1].group(1).rstrip(","))
    numbers = re.findall(_NUMBER, text)
    return _to_int(numbers[-1].rstrip(",")) if numbers else None


def math_scores(problems_, generated_texts) -> np.ndarray:
    """1.0 where the answer extracted from the generated text equals the problem's answer, else 0.0."""
    problems_, generated_texts = list(problems_), list(generated_texts)
    if len(problems_) != len(generated_texts):
        raise ConfigError(f"{len(problems_)} problems but {len(generated_texts)} generated texts; pass one text "
                          "per problem.")
    return np.asarray([float(extract_answer(t) == p.answer) for p, t in zip(problems_, generated_texts)])


def math_accuracy(problems_, generated_texts) -> float:
    """Fraction of problems whose extracted answer is right."""
    scores = math_scores(problems_, generated_texts)
    return float(scores.mean()) if len(scores) else 0.0

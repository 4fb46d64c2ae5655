"""Arithmetic word problems: determinism, disjoint splits, worked solutions, answer extraction."""
import itertools
import re

import numpy as np
import pytest

from m2n2_jax.errors import ConfigError
from experiments.smollm2 import word_problems

SIZES = dict(train=300, fitness=40, selection=30, test=60)


def check_solution(target: str) -> int:
    """Re-do every step of a worked solution with Python arithmetic; return the stated answer."""
    steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", target)
    assert 2 <= len(steps) <= 4, target
    for a, op, b, c in steps:
        a, b, c = int(a), int(b), int(c)
        assert {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == c, target
    chained = [int(s[3]) for s in steps[:-1]]
    assert all(str(v) in " ".join(s[0] + " " + s[2] for s in steps[i + 1:]) for i, v in enumerate(chained))
    stated = re.fullmatch(r".* The answer is (\d+)\.", target)
    assert stated, target
    assert int(stated.group(1)) == int(steps[-1][3])
    return int(stated.group(1))


def test_splits_are_deterministic_disjoint_and_sized():
    a = word_problems.make_splits(3, **SIZES)
    assert a == word_problems.make_splits(3, **SIZES)
    assert a != word_problems.make_splits(4, **SIZES)
    assert {k: len(v) for k, v in a.items()} == SIZES
    texts = {k: {p.prompt for p in v} for k, v in a.items()}
    assert all(len(texts[k]) == SIZES[k] for k in texts)  # distinct within a split
    for x, y in itertools.combinations(texts, 2):
        assert not texts[x] & texts[y]
    # test does not move when the other splits grow
    assert word_problems.make_splits(3, train=10, fitness=5, selection=0, test=60)["test"] == a["test"]


def test_default_sizes_and_problems():
    splits = word_problems.make_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "fitness": 100, "selection": 100, "test": 200}
    assert word_problems.problems("test", limit=7) == splits["test"][:7]
    with pytest.raises(ConfigError, match="unknown split"):
        word_problems.problems("dev")
    with pytest.raises(ConfigError, match="non-negative"):
        word_problems.make_splits(train=-1)


def test_worked_solutions_are_right_and_varied():
    problems = word_problems.make_splits(0, **SIZES)["train"]
    counts = {2: 0, 3: 0, 4: 0}
    for p in problems:
        assert check_solution(p.target) == p.answer >= 0
        assert p.target.endswith(f"The answer is {p.answer}.")
        counts[p.target.count(" = ")] += 1
        assert max(int(n) for n in re.findall(r"\d+", p.prompt)) <= 200  # small numbers
    assert all(counts.values()), counts  # 2, 3 and 4 operations all occur
    assert len({p.answer for p in problems}) > 30
    assert len({p.prompt.split()[1] for p in problems}) >= 5  # several templates


@pytest.mark.parametrize("text,want", [
    ("3 + 4 = 7. The answer is 7.", 7),
    ("The answer is 12", 12),
    ("the ANSWER is: 1,200 dollars", 1200),
    ("The answer is $15.", 15),
    ("The answer is 12. Wait, the answer is 13.", 13),  # the last final-answer phrase
    ("so 4 * 5 = 20 and then 20 - 3 = 17", 17),  # no phrase: the last number
    ("It is 7.0 in total", 7),
    ("about 2.5 each", None),
    ("I do not know.", None),
    ("", None),
    ("The answer is -3.", -3),
    ("The answer is 42.\n<|im_end|>", 42),
    ("The answer is forty, or 40", 40),  # phrase without a number: fall back to the last number
])
def test_extract_answer(text, want):
    assert word_problems.extract_answer(text) == want


def test_accuracy_is_the_mean_of_a_plain_loop():
    problems = word_problems.make_splits(1, train=0, fitness=0, selection=0, test=20)["test"]
    rng = np.random.default_rng(0)
    texts = [p.target if rng.random() < 0.5 else f"The answer is {p.answer + 1}." for p in problems]
    want = sum(word_problems.extract_answer(t) == p.answer for p, t in zip(problems, texts)) / len(problems)
    assert 0 < want < 1
    assert word_problems.math_accuracy(problems, texts) == pytest.approx(want)
    assert word_problems.math_accuracy(problems, [p.target for p in problems]) == 1.0
    with pytest.raises(ConfigError, match="one text per problem"):
        word_problems.math_accuracy(problems, texts[:-1])

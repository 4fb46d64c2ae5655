"""The tiny-model experiment's generated tasks: determinism, correct answers, disjoint splits, vocabulary."""
import re

import pytest

from experiments.tiny_llm import toy_tasks


def solve_math(prompt: str) -> str:
    words = prompt.split()
    value = int(words[2])
    for i, w in enumerate(words):
        if w == "gets":
            value += int(words[i + 1])
        elif w == "away":
            value -= int(words[i + 1])
    return str(value)


def solve_agent(prompt: str) -> str:
    goal = re.search(r"buy (\w+) (\w+)", prompt).groups()
    items = re.findall(r"\[(\d)\] (\w+) (\w+)", prompt)
    for slot, colour, kind in items:
        if (colour, kind) == goal:
            return f"click [{slot}]"
    assert any(kind == goal[1] for _, _, kind in items)
    return "next page"


@pytest.mark.parametrize("task,solve", [("math", solve_math), ("agent", solve_agent)])
def test_generators_are_deterministic_and_correct(task, solve):
    a = toy_tasks.make_examples(task, 200, seed=7)
    assert a == toy_tasks.make_examples(task, 200, seed=7)
    assert a != toy_tasks.make_examples(task, 200, seed=8)
    for prompt, answer in a:
        assert answer == solve(prompt)
    answers = {ans for _, ans in a}
    assert len(answers) > 3  # not a constant task


def test_splits_are_disjoint_and_in_vocabulary():
    splits = toy_tasks.make_splits("agent", 300, 100, seed=1)
    assert len(splits["train"]) == 300 and len(splits["test"]) == 100
    assert not {p for p, _ in splits["test"]} & {p for p, _ in splits["train"]}
    tok = toy_tasks.make_tokenizer()
    for p, a in splits["train"] + toy_tasks.make_examples("math", 300, 2):
        assert 3 not in tok.encode(p + " " + a)  # no unknown words

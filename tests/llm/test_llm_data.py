"""Generated tasks: determinism, correct answers, disjoint splits, encoding."""
import re

import pytest

from m2n2_jax.errors import ConfigError
from m2n2_jax.llm import data


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
    a = data.make_examples(task, 200, seed=7)
    assert a == data.make_examples(task, 200, seed=7)
    assert a != data.make_examples(task, 200, seed=8)
    for prompt, answer in a:
        assert answer == solve(prompt)
    answers = {ans for _, ans in a}
    assert len(answers) > 3  # not a constant task


def test_splits_are_disjoint_and_in_vocabulary():
    splits = data.make_splits("agent", 300, 100, seed=1)
    assert len(splits["train"]) == 300 and len(splits["test"]) == 100
    assert not {p for p, _ in splits["test"]} & {p for p, _ in splits["train"]}
    tok = data.make_tokenizer()
    for p, a in splits["train"] + data.make_examples("math", 300, 2):
        assert 3 not in tok.encode(p + " " + a)  # no unknown words


def test_encode_marks_answer_tokens():
    tok = data.make_tokenizer()
    batch = data.encode(tok, [("ann has 3 pens . how many pens now ?", "3"), ("goal : buy", "click 2")], 14)
    assert batch.tokens.shape == (2, 14)
    assert batch.tokens[0, 0] == tok.bos_id and batch.prompt_lengths.tolist() == [11, 4]
    assert tok.decode(batch.tokens[1][batch.targets[1] > 0]) == "click 2"
    assert batch.tokens[1, 6] == tok.eos_id and batch.targets[1].sum() == 3
    with pytest.raises(ConfigError, match="shorter"):
        data.encode(tok, [("a b c", "d")], 3)


def test_tokenizer_round_trip(tmp_path):
    tok = data.make_tokenizer()
    tok.save(str(tmp_path))
    again = type(tok).load(str(tmp_path))
    assert again == tok
    assert again.decode(again.encode("click 3") + [tok.eos_id, 5]) == "click 3"

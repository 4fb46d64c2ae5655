"""The SmolLM2 experiment's data, at the sizes it runs: fine-tuning, fitness, selection and held-out test
share no content word for word (issue 24: 68 of 200 held-out math problems had a worked solution that was
also a fine-tuning target, under other names)."""
import itertools

from experiments.smollm2 import evaluate, shop

SPLITS = ("train", "fitness", "selection", "test")


def shared(sets: dict) -> list:
    """(split a, split b, an example) for every pair of splits whose sets intersect."""
    return [(a, b, sorted(sets[a] & sets[b])[0]) for a, b in itertools.combinations(sets, 2) if sets[a] & sets[b]]


def test_math_questions_and_worked_solutions_are_in_one_split_only():
    problems = {s: evaluate.math_problems(s) for s in SPLITS}
    assert not shared({s: {p.prompt for p in v} for s, v in problems.items()})
    assert not shared({s: {p.target for p in v} for s, v in problems.items()})
    # what fine-tuning sees is the train split's (prompt, target) pairs, nothing else
    targets = {t for _, t in evaluate.training_pairs("math", "train")}
    assert targets == {p.target for p in problems["train"]}


def test_shop_goals_instructions_and_expert_episodes_are_in_one_split_only():
    items = evaluate.catalogue()
    goals = {s: evaluate.shop_goals(s) for s in SPLITS}
    assert not shared({s: {g.text for g in v} for s, v in goals.items()})
    assert not shared({s: {(g.type, g.attributes, g.options) for g in v} for s, v in goals.items()})
    episodes = {s: {tuple(a for _, a in shop.expert_episode(items, g)) for g in v} for s, v in goals.items()}
    assert not shared(episodes)
    # fine-tuning prompts name train goals only
    train_texts = {g.text for g in goals["train"]}
    prompts = {p for p, _ in evaluate.training_pairs("agent", "train")}
    assert all(any(f"Goal: {t}\n" in p for t in train_texts) for p in itertools.islice(prompts, 200))
    held = {g.text for s in SPLITS[1:] for g in goals[s]}
    assert not any(f"Goal: {t}\n" in p for p in prompts for t in held)

"""The WebShop-like simulator: catalogue, goals, pages, actions, reward, expert."""
import dataclasses
import itertools

import pytest

from m2n2_jax.errors import ConfigError
from experiments.smollm2 import shop

SIZES = dict(train=120, fitness=30, selection=20, test=40)


@pytest.fixture(scope="module")
def catalogue():
    return shop.make_catalogue(0)


@pytest.fixture(scope="module")
def splits(catalogue):
    return shop.make_splits(0, catalogue=catalogue, **SIZES)


def red_shirt_goal(price_limit=30):
    return shop.Goal("I need a red cotton t-shirt in size M, under 30 dollars.", "clothing", "t-shirt",
                     ("red", "cotton"), (("size", "M"),), price_limit)


def item(**kw):
    base = dict(id="i100", department="clothing", type="t-shirt", attributes=("red", "cotton"), option_name="size",
                option_values=("S", "M", "L"), price=25)
    return shop.Item(**{**base, **kw})


def test_reward_by_hand():
    goal = red_shirt_goal()
    assert shop.reward(goal, item(), {"size": "M"}) == 1.0  # all matched
    assert shop.reward(goal, item(attributes=("blue", "cotton")), {"size": "M"}) == 0.75  # wrong colour: 3 of 4
    assert shop.reward(goal, item(price=31), {"size": "M"}) == 0.75  # over the price limit
    assert shop.reward(goal, item(price=30), {"size": "M"}) == 1.0  # at the limit is within it
    assert shop.reward(goal, item(), {"size": "L"}) == 0.75  # wrong size
    assert shop.reward(goal, item(), {}) == 0.75  # no size chosen
    assert shop.reward(goal, item(attributes=("blue", "wool"), price=99), {}) == 0.0
    assert shop.reward(goal, item(type="hoodie"), {"size": "M"}) == 0.5  # same department, other type
    assert shop.reward(goal, item(type="mug", department="home"), {"size": "M"}) == 0.0  # other department
    assert shop.reward(goal, None) == 0.0  # nothing bought


def test_catalogue_and_splits_are_deterministic_and_disjoint(catalogue, splits):
    assert shop.make_catalogue(0) == catalogue and shop.make_catalogue(1) != catalogue
    assert len({i.id for i in catalogue}) == len(catalogue)
    assert shop.make_splits(0, catalogue=catalogue, **SIZES) == splits
    assert shop.make_splits(1, **SIZES) != splits
    assert {k: len(v) for k, v in splits.items()} == SIZES
    keys = {k: {(g.type, g.attributes, g.options) for g in v} for k, v in splits.items()}
    texts = {k: {g.text for g in v} for k, v in splits.items()}
    for a, b in itertools.combinations(SIZES, 2):
        assert not keys[a] & keys[b] and not texts[a] & texts[b]
    assert all(len(keys[k]) == SIZES[k] for k in keys)
    assert len({g.type for g in splits["test"]}) >= 8
    with pytest.raises(ConfigError, match="unknown split"):
        shop.goals("valid")


def test_default_test_split_has_100_goals():
    assert len(shop.goals("test")) == 100


def test_the_expert_reaches_reward_one_on_every_goal(catalogue, splits):
    for goal in [g for v in splits.values() for g in v]:
        state, actions = shop.reset(goal), []
        while not state.done:
            action = shop.expert_action(catalogue, state)
            assert action in shop.available_actions(state) or action.startswith("search[")
            actions.append(action)
            state = shop.step(catalogue, state, action)
        assert state.reward == 1.0, (goal, actions)
        assert len(actions) <= shop.MAX_STEPS
        assert actions[0] == f"search[{goal.query}]" and actions[-1] == "click[buy now]"
        bought = next(i for i in catalogue if f"click[{i.id}]" in actions)
        assert bought.price <= goal.price_limit and set(goal.attributes) <= set(bought.attributes)


def test_pages_invalid_actions_and_step_limit(catalogue, splits):
    goal = splits["test"][0]
    state = shop.reset(goal)
    assert "search[<query>]" in shop.observation(state) and goal.text in shop.observation(state)
    state = shop.step(catalogue, state, "click[buy now]")  # not on the search page
    assert state.page == "search" and state.steps == 1 and "Invalid action" in shop.render(state)
    state = shop.step(catalogue, state, f"search[{goal.query}]")
    assert state.page == "results" and "Invalid" not in shop.render(state)
    page = shop.render(state)
    assert all(f"[{i.id}] {i.name} - ${i.price}" in page for i in state.results)
    assert 1 <= len(state.results) <= shop.RESULTS_PER_PAGE
    first = state.results[0]
    state = shop.step(catalogue, state, f"click[{first.id}]")
    assert state.page == "item" and f"Price: ${first.price}" in shop.render(state)
    state = shop.step(catalogue, state, "click[no such size]")
    assert state.page == "item" and "Invalid action" in shop.render(state)
    state = shop.step(catalogue, state, "click[back to search]")
    assert state.page == "search"
    state = shop.step(catalogue, state, "hello")  # sixth action: the step limit ends the episode, nothing bought
    assert state.done and state.reward == 0.0 and state.steps == shop.MAX_STEPS
    with pytest.raises(ConfigError, match="episode is over"):
        shop.step(catalogue, state, "buy")


def test_buying_the_wrong_item_scores_as_webshop(catalogue, splits):
    goal = splits["test"][1]
    state = shop.step(catalogue, shop.reset(goal), f"search[{goal.query}]")
    for candidate in state.results:
        s = shop.step(catalogue, state, f"click[{candidate.id}]")
        s = shop.step(catalogue, s, "buy")  # 'buy' is accepted for click[buy now]
        assert s.done
        assert s.reward == shop.reward(goal, candidate, {})  # no option chosen
        assert s.reward < 1.0


def test_parse_action():
    assert shop.parse_action("search[red cotton t-shirt]") == ("search", "red cotton t-shirt")
    assert shop.parse_action("  Click[ i123 ]\nmore text") == ("click", "i123")
    assert shop.parse_action("buy") == ("click", "buy now")
    assert shop.parse_action("click[buy]") == ("click", "buy now")
    assert shop.parse_action("click i123") is None
    assert shop.parse_action("") is None


def test_search_ranks_by_shared_words(catalogue):
    results = shop.search(catalogue, "red cotton t-shirt")
    words = {"red", "cotton", "t-shirt"}
    overlap = [len(words & i.words) for i in results]
    assert overlap == sorted(overlap, reverse=True) and overlap[0] == 3
    best_elsewhere = max(len(words & i.words) for i in catalogue if i not in results)
    assert best_elsewhere <= overlap[-1]
    assert shop.search(catalogue, "zzz") == ()


def test_goal_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        red_shirt_goal().price_limit = 3

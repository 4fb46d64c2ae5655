"""A small WebShop-like shopping simulator: goals, text pages, actions, WebShop's reward.

WebShop (Yao et al. 2022) asks an agent to buy a product matching an instruction
by searching, opening items, choosing options and buying. This is a compact
version of the same loop with a generated catalogue:

- a goal: a product type, attributes (colour, material), one option (a size, or
  a pack count) and a price limit, as text: "I need a red cotton t-shirt in size M,
  under 30 dollars.";
- pages: the search page, a results page (up to :data:`RESULTS_PER_PAGE` items
  with ids, names and prices), an item page (attributes, options, price);
- actions: ``search[query]``, ``click[item id]``, ``click[option value]``,
  ``click[buy now]`` (``buy`` is accepted too), ``click[back to search]``;
- an episode ends when something is bought or after :data:`MAX_STEPS` actions.
  An action the page does not offer changes nothing but the step count; the next
  page says it was invalid.

Reward, as WebShop computes it (its paper, section 3, and ``get_reward`` in its
code): the bought item earns one point per goal attribute it has, one per goal
option chosen as asked, and one if its price is within the limit; the sum is
divided by (number of goal attributes + number of goal options + 1) and then
multiplied by a product-type factor r_type. WebShop derives r_type from text
matches of query, category path and title nouns (1, or 0.5 / 0.1 / 0 for weaker
matches); here the catalogue has exact types, so r_type is 1 for the goal's
product type, 0.5 for another type of the same department and 0 otherwise.
Nothing bought: reward 0.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from m2n2_jax.errors import ConfigError

MAX_STEPS = 6
RESULTS_PER_PAGE = 5
SPLITS = ("train", "fitness", "selection", "test")
DEFAULT_SIZES = {"train": 500, "fitness": 100, "selection": 100, "test": 100}
BUY, BACK = "buy now", "back to search"
COLOURS = ("red", "blue", "black", "white", "green", "grey", "pink", "yellow")
CLOTHING_SIZES = ("XS", "S", "M", "L", "XL")
SHOE_SIZES = ("6", "7", "8", "9", "10", "11")
BAG_SIZES = ("small", "medium", "large")
PACKS = ("1 pack", "2 pack", "4 pack")
# department -> (product type, materials, option name, option values, price range in dollars)
DEPARTMENTS = {
    "clothing": [("t-shirt", ("cotton", "linen", "polyester"), "size", CLOTHING_SIZES, (8, 40)),
                 ("hoodie", ("cotton", "fleece", "wool"), "size", CLOTHING_SIZES, (20, 70)),
                 ("jeans", ("denim", "cotton", "stretch"), "size", CLOTHING_SIZES, (25, 90)),
                 ("jacket", ("leather", "nylon", "wool"), "size", CLOTHING_SIZES, (40, 150))],
    "shoes": [("sneakers", ("canvas", "leather", "mesh"), "size", SHOE_SIZES, (30, 120)),
              ("boots", ("leather", "suede", "rubber"), "size", SHOE_SIZES, (50, 160)),
              ("sandals", ("leather", "rubber", "cork"), "size", SHOE_SIZES, (15, 60))],
    "home": [("mug", ("ceramic", "glass", "steel"), "pack", PACKS, (6, 30)),
             ("lamp", ("metal", "wood", "glass"), "pack", PACKS, (15, 80)),
             ("pillow", ("cotton", "linen", "velvet"), "pack", PACKS, (10, 45)),
             ("towel", ("cotton", "bamboo", "linen"), "pack", PACKS, (8, 35))],
    "bags": [("backpack", ("nylon", "canvas", "leather"), "size", BAG_SIZES, (25, 110)),
             ("tote bag", ("canvas", "cotton", "leather"), "size", BAG_SIZES, (10, 60))],
}
GOAL_FORMS = ("I need a {desc}, under {price} dollars.", "Find me a {desc} that costs less than {price} dollars.",
              "I am looking for a {desc}, price lower than {price} dollars.")


@dataclasses.dataclass(frozen=True)
class Item:
    """A product: id, department, product type, attributes (colour, material), one option's values, price."""

    id: str
    department: str
    type: str
    attributes: tuple[str, ...]
    option_name: str
    option_values: tuple[str, ...]
    price: int

    @property
    def name(self) -> str:
        return " ".join(a.capitalize() for a in self.attributes) + " " + self.type.title()

    @property
    def words(self) -> set[str]:
        return set(_words(" ".join(self.attributes) + " " + self.type + " " + self.department))


@dataclasses.dataclass(frozen=True)
class Goal:
    """What to buy: instruction text, product type, attributes, {option name: value}, price limit."""

    text: str
    department: str
    type: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    price_limit: int

    @property
    def query(self) -> str:
        """The search query the expert types: attributes and product type."""
        return " ".join(self.attributes) + " " + self.type


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())


def make_catalogue(seed: int = 0) -> tuple[Item, ...]:
    """Every (type, colour, material) once or twice (a second, dearer brand), ids in a shuffled order."""
    rng = np.random.default_rng([seed, 5])
    rows = []
    for department, types in DEPARTMENTS.items():
        for kind, materials, option_name, values, (low, high) in types:
            for colour in COLOURS:
                for material in materials:
                    for _ in range(1 + int(rng.random() < 0.5)):
                        price = int(rng.integers(low, high + 1))
                        offered = tuple(v for v in values if rng.random() < 0.8) or values
                        rows.append((department, kind, (colour, material), option_name, offered, price))
    order = rng.permutation(len(rows))
    ids = rng.choice(np.arange(100, 1000), size=len(rows), replace=False)
    return tuple(Item(f"i{ids[k]}", *rows[i]) for k, i in enumerate(order))


def search(catalogue, query: str) -> tuple[Item, ...]:
    """The :data:`RESULTS_PER_PAGE` items sharing most words with ``query`` (ties: catalogue order)."""
    words = set(_words(query))
    scored = [(-len(words & item.words), k) for k, item in enumerate(catalogue)]
    best = sorted(s for s in scored if s[0] < 0)[:RESULTS_PER_PAGE]
    return tuple(catalogue[k] for _, k in best)


def reward(goal: Goal, item: Item | None, chosen: dict | tuple = ()) -> float:
    """WebShop's reward for buying ``item`` with options ``chosen`` (see the module note); 0 for nothing."""
    if item is None:
        return 0.0
    chosen = dict(chosen)
    attributes = sum(a in item.attributes for a in goal.attributes)
    options = sum(chosen.get(name) == value for name, value in goal.options)
    price = float(item.price <= goal.price_limit)
    if item.type == goal.type:
        r_type = 1.0
    elif item.department == goal.department:
        r_type = 0.5
    else:
        r_type = 0.0
    return r_type * (attributes + options + price) / (len(goal.attributes) + len(goal.options) + 1)


@dataclasses.dataclass(frozen=True)
class State:
    """Where an episode is: page kind ('search', 'results', 'item', 'done'), results, item, chosen options."""

    goal: Goal
    page: str = "search"
    query: str = ""
    results: tuple[Item, ...] = ()
    item: Item | None = None
    chosen: tuple[tuple[str, str], ...] = ()
    steps: int = 0
    reward: float = 0.0
    message: str = ""

    @property
    def done(self) -> bool:
        return self.page == "done"


def reset(goal: Goal) -> State:
    """The first state of an episode: the search page."""
    return State(goal)


def available_actions(state: State) -> list[str]:
    """The actions the current page offers (``search[<query>]`` stands for any query)."""
    if state.page == "search":
        return ["search[<query>]"]
    if state.page == "results":
        return [f"click[{item.id}]" for item in state.results] + [f"click[{BACK}]"]
    if state.page == "item":
        return [f"click[{v}]" for v in state.item.option_values] + [f"click[{BUY}]", f"click[{BACK}]"]
    return []


def parse_action(text: str) -> tuple[str, str] | None:
    """("search" | "click", argument) from an action's text (its first line), or None if malformed."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if line.lower() in ("buy", "buy now", "click[buy]"):
        return "click", BUY
    match = re.fullmatch(r"(search|click)\s*\[(.*)\]\.?", line, re.IGNORECASE)
    if not match:
        return None
    return match.group(1).lower(), match.group(2).strip()


def step(catalogue, state: State, action: str) -> State:
    """The state after ``action``; an action the page does not offer leaves the page as it was."""
    if state.done:
        raise ConfigError("the episode is over (an item was bought or the step limit reached); reset it.")
    parsed = parse_action(action)
    steps = state.steps + 1
    new = None
    if parsed is not None:
        kind, argument = parsed
        arg = argument.lower()
        if state.page == "search" and kind == "search" and argument:
            new = dataclasses.replace(state, page="results", query=argument, results=search(catalogue, argument),
                                      item=None, chosen=())
        elif kind == "click" and arg == BACK and state.page in ("results", "item"):
            new = dataclasses.replace(state, page="search", query="", results=(), item=None, chosen=())
        elif state.page == "results" and kind == "click":
            item = next((i for i in state.results if i.id == arg), None)
            if item is not None:
                new = dataclasses.replace(state, page="item", item=item, chosen=())
        elif state.page == "item" and kind == "click":
            if arg in (BUY, "buy"):
                new = dataclasses.replace(state, page="done", reward=reward(state.goal, state.item, state.chosen))
            else:
                value = next((v for v in state.item.option_values if v.lower() == arg), None)
                if value is not None:
                    chosen = dict(state.chosen)
                    chosen[state.item.option_name] = value
                    new = dataclasses.replace(state, chosen=tuple(sorted(chosen.items())))
    if new is None:
        new = dataclasses.replace(state, message=f"Invalid action: {action.strip()[:60]!r} is not on this page.")
    else:
        new = dataclasses.replace(new, message="")
    new = dataclasses.replace(new, steps=steps)
    if not new.done and steps >= MAX_STEPS:
        new = dataclasses.replace(new, page="done", reward=0.0)
    return new


def render(state: State) -> str:
    """The page's text, as the agent sees it."""
    lines = [state.message] if state.message else []
    if state.page == "search":
        lines.append("Search page. Type a query to search the shop.")
    elif state.page == "results":
        lines.append(f"Results for \"{state.query}\":" if state.results else f"No results for \"{state.query}\".")
        lines += [f"[{item.id}] {item.name} - ${item.price}" for item in state.results]
    elif state.page == "item":
        item = state.item
        chosen = dict(state.chosen).get(item.option_name)
        lines += [f"Item {item.id}: {item.name}", f"Price: ${item.price}",
                  f"{item.option_name.capitalize()}: {', '.join(item.option_values)}"
                  + (f" (chosen: {chosen})" if chosen else " (none chosen)")]
    else:
        lines.append(f"Episode over. Reward {state.reward:.2f}.")
    return "\n".join(lines)


def observation(state: State) -> str:
    """What the agent reads before acting: goal, page and the allowed actions (no chat formatting)."""
    return (f"Goal: {state.goal.text}\n{render(state)}\n"
            f"Actions: {' '.join(available_actions(state))}\nNext action?")


def expert_action(catalogue, state: State) -> str:
    """The action of the expert policy: search the goal's query, open the first result that can reach
    reward 1, choose the goal's option, buy."""
    goal = state.goal
    if state.page == "search":
        return f"search[{goal.query}]"
    if state.page == "results":
        for item in state.results:
            if _fits(goal, item):
                return f"click[{item.id}]"
        return f"click[{BACK}]"
    if state.page == "item":
        if not _fits(goal, state.item):
            return f"click[{BACK}]"
        chosen = dict(state.chosen)
        for name, value in goal.options:
            if chosen.get(name) != value:
                return f"click[{value}]"
        return f"click[{BUY}]"
    raise ConfigError("the episode is over; the expert has no action.")


def _fits(goal: Goal, item: Item) -> bool:
    options = dict(goal.options)
    return (item.type == goal.type and all(a in item.attributes for a in goal.attributes)
            and item.price <= goal.price_limit and options.get(item.option_name) in item.option_values)


def expert_episode(catalogue, goal: Goal) -> list[tuple[State, str]]:
    """The expert's (state, action) pairs from the search page to the purchase."""
    state, pairs = reset(goal), []
    while not state.done:
        action = expert_action(catalogue, state)
        pairs.append((state, action))
        state = step(catalogue, state, action)
    return pairs


def make_goal(catalogue, rng: np.random.Generator) -> Goal:
    """A goal built around one catalogue item: its type, attributes, an option it offers, a price limit
    at or above its price (the next multiple of 10, sometimes 10 more)."""
    item = catalogue[int(rng.integers(len(catalogue)))]
    value = item.option_values[int(rng.integers(len(item.option_values)))]
    limit = int(math.ceil((item.price + 1) / 10.0) * 10) + 10 * int(rng.random() < 0.3)
    colour, material = item.attributes
    if item.option_name == "size":
        where = f" in size {value}"
    else:
        where = f", {value}"
    desc = f"{colour} {material} {item.type}{where}"
    form = GOAL_FORMS[int(rng.integers(len(GOAL_FORMS)))]
    return Goal(form.format(desc=desc, price=limit), item.department, item.type, item.attributes,
                ((item.option_name, value),), limit)


def make_splits(seed: int = 0, train: int = DEFAULT_SIZES["train"], fitness: int = DEFAULT_SIZES["fitness"],
                selection: int = DEFAULT_SIZES["selection"], test: int = DEFAULT_SIZES["test"],
                catalogue=None) -> dict[str, list[Goal]]:
    """{"train", "fitness", "selection", "test"}: goals deterministic in ``seed``, no (type, attributes, option)
    and no instruction text in two places, each one the expert completes with reward 1 in at most
    :data:`MAX_STEPS` actions (so no expert episode is in two splits either).

    Goals of one stream fill test first, then fitness, selection and train.
    """
    catalogue = make_catalogue(seed) if catalogue is None else catalogue
    sizes = {"test": test, "fitness": fitness, "selection": selection, "train": train}
    for name, size in sizes.items():
        if int(size) != size or size < 0:
            raise ConfigError(f"shop split {name} size must be a non-negative integer, got {size!r}.")
    rng = np.random.default_rng([seed, 17])
    seen, out, draws, total = set(), {name: [] for name in sizes}, 0, sum(sizes.values())
    for name, size in sizes.items():
        while len(out[name]) < size:
            draws += 1
            if draws > 50 * total + 1000:
                raise ConfigError(f"cannot draw {total} distinct shop goals; ask for fewer.")
            goal = make_goal(catalogue, rng)
            key = (goal.type, goal.attributes, goal.options)
            if key in seen or goal.text in seen:
                continue
            pairs = expert_episode(catalogue, goal)
            final = step(catalogue, pairs[-1][0], pairs[-1][1])
            if final.reward == 1.0 and len(pairs) <= MAX_STEPS:
                seen.update((key, goal.text))
                out[name].append(goal)
    return {name: out[name] for name in SPLITS}


def goals(split: str, seed: int = 0, limit: int | None = None, **sizes) -> list[Goal]:
    """The goals of one split (default sizes :data:`DEFAULT_SIZES`), the first ``limit`` if given."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    chosen = make_splits(seed, **sizes)[split]
    return chosen if limit is None else chosen[:limit]

"""Prompts, training pairs, held-out evaluation and cheap fitness scores for the two LLM tasks.

Tasks: ``"math"`` (:mod:`experiments.smollm2.word_problems`) and ``"agent"`` (:mod:`experiments.smollm2.shop`).

Prompt format: the model is an instruct model (SmolLM2-135M-Instruct), so every
prompt is its chat template (ChatML, as the GGUF metadata's template renders it)
with a short task-specific system message: ``<|im_start|>system\\n...<|im_end|>\\n
<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n``. The target is the
assistant's reply, ended by the tokenizer's end-of-sequence token (``<|im_end|>``).
:func:`format_prompt` is the one place this is decided: fine-tuning
(:func:`training_pairs`), held-out evaluation and fitness all use it.

Held-out evaluation is what a user runs: greedy decoding with the key/value cache
(:func:`m2n2_jax.llm.generate.greedy`), batched; math answers are extracted from
the text; agent episodes run in lockstep (all unfinished episodes' next actions
are one batch), the simulator turning each action into the next page.

Fitness is teacher-forced (one forward pass per batch, no generation): a
datapoint scores 1 when the argmax at every target token is the gold token
(:func:`m2n2_jax.llm.generate.answer_scores`). ``mode="full"`` scores the whole
target and its end token, which is the event "greedy decoding writes exactly the
target and stops"; for math ``mode="answer"`` scores only the final answer's
tokens (and the end token) given the gold worked solution. Agent datapoints are
the expert's steps on the split's goals.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import ConfigError
from experiments.smollm2 import shop, word_problems
from m2n2_jax.llm import generate, scoring
from m2n2_jax.llm.data import Batch, encode

TASKS = ("math", "agent")
SYSTEM = {
    "math": "Solve the word problem step by step, one equation per step. End with 'The answer is N.'",
    "agent": ("You are a shopping agent. Reply with exactly one action from the list, such as "
              "search[blue wool hoodie] or click[i123], and nothing else."),
}
MAX_NEW_TOKENS = {"math": 128, "agent": 24}
STOP = {"math": (), "agent": ("\n",)}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}.")


def format_prompt(task: str, text: str) -> str:
    """``text`` (a problem, or an agent observation) as the model's chat prompt for ``task``."""
    _check_task(task)
    return (f"<|im_start|>system\n{SYSTEM[task]}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


@functools.lru_cache(maxsize=8)
def _math_splits(seed: int) -> dict:
    return word_problems.make_splits(seed)


@functools.lru_cache(maxsize=8)
def _shop(seed: int) -> tuple:
    catalogue = shop.make_catalogue(seed)
    return catalogue, shop.make_splits(seed, catalogue=catalogue)


def math_problems(split: str, seed: int = 0, limit: int | None = None) -> list:
    """The math problems of a split (default sizes)."""
    if split not in word_problems.SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(word_problems.SPLITS)}.")
    out = _math_splits(seed)[split]
    return list(out if limit is None else out[:limit])


def shop_goals(split: str, seed: int = 0, limit: int | None = None) -> list:
    """The shop goals of a split (default sizes)."""
    if split not in shop.SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(shop.SPLITS)}.")
    out = _shop(seed)[1][split]
    return list(out if limit is None else out[:limit])


def catalogue(seed: int = 0) -> tuple:
    """The shop's catalogue for ``seed`` (the one its goals were made for)."""
    return _shop(seed)[0]


def training_pairs(task: str, split: str = "train", seed: int = 0, limit: int | None = None) -> list[tuple[str, str]]:
    """(formatted prompt, target) pairs: math problems and their worked solutions, or every step of the
    expert's episode on each goal (``limit``: the first N problems / goals)."""
    _check_task(task)
    if task == "math":
        return [(format_prompt("math", p.prompt), p.target) for p in math_problems(split, seed, limit)]
    items = catalogue(seed)
    return [(format_prompt("agent", shop.observation(state)), action)
            for goal in shop_goals(split, seed, limit) for state, action in shop.expert_episode(items, goal)]


# ---------------------------------------------------------------- generation


def _decode(tokenizer, ids) -> str:
    eos = set(tokenizer.eos_ids)
    while ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids)


def generate_texts(config, params, tokenizer, prompts, max_new_tokens: int, stop=(), batch_size: int = 32,
                   bucket: int = 32, matmul: str = "float32") -> list[str]:
    """Greedy replies (KV cache) to formatted prompts, in batches of ``batch_size`` prompts of similar
    length; with ``bucket`` > 1 the prompts are left-padded to a multiple of ``bucket`` tokens and a batch
    is filled up to a power of two with copies, to reuse compiled shapes. The end token is removed, a stop
    string is kept as generated."""
    ids = [tokenizer.encode_prompt(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [ids[i] for i in chunk]
        width = 1 << (len(rows) - 1).bit_length()  # a power of two: few distinct batch shapes to compile
        rows += [rows[0]] * (min(width, batch_size) - len(rows)) if bucket > 1 else []
        new = generate.greedy(config, params, rows, max_new_tokens, tokenizer.eos_ids,
                              stop=tuple(stop), decode=tokenizer.decode, bucket=bucket, matmul=matmul)
        for i, n in zip(chunk, new):
            out[i] = _decode(tokenizer, n)
    return out


def evaluate_math(config, params, tokenizer, problems, batch_size: int = 32,
                  max_new_tokens: int = MAX_NEW_TOKENS["math"], matmul: str = "float32") -> dict:
    """Held-out math: accuracy of the answers extracted from greedy replies, per-problem scores, texts."""
    texts = generate_texts(config, params, tokenizer, [format_prompt("math", p.prompt) for p in problems],
                           max_new_tokens, STOP["math"], batch_size, matmul=matmul)
    scores = word_problems.math_scores(problems, texts)
    return {"accuracy": float(scores.mean()) if len(scores) else 0.0, "scores": scores.tolist(), "texts": texts}


@dataclasses.dataclass
class Episode:
    """One agent episode: its goal, the actions taken, the final state and reward."""

    goal: object
    actions: list
    final: object

    @property
    def reward(self) -> float:
        return self.final.reward

    @property
    def success(self) -> bool:
        return self.final.reward == 1.0


def run_episodes(policy, goals, items, max_steps: int = shop.MAX_STEPS) -> list[Episode]:
    """Run every goal's episode in lockstep: each round, ``policy(prompts) -> actions`` gets the formatted
    prompts of all unfinished episodes; ``items`` is the catalogue."""
    if max_steps > shop.MAX_STEPS:
        raise ConfigError(f"max_steps {max_steps} exceeds the simulator's limit {shop.MAX_STEPS}.")
    states = [shop.reset(g) for g in goals]
    actions = [[] for _ in goals]
    for _ in range(max_steps):
        active = [i for i, s in enumerate(states) if not s.done]
        if not active:
            break
        replies = policy([format_prompt("agent", shop.observation(states[i])) for i in active])
        if len(replies) != len(active):
            raise ConfigError(f"the policy answered {len(replies)} prompts of {len(active)}; it must answer each.")
        for i, reply in zip(active, replies):
            actions[i].append(reply)
            states[i] = shop.step(items, states[i], reply)
    return [Episode(g, a, s) for g, a, s in zip(goals, actions, states)]


def agent_metrics(episodes) -> dict:
    """Mean reward, success rate (reward 1), per-episode rewards and steps."""
    rewards = [e.reward for e in episodes]
    return {"mean_reward": float(np.mean(rewards)) if rewards else 0.0,
            "success_rate": float(np.mean([e.success for e in episodes])) if rewards else 0.0,
            "rewards": rewards, "steps": [len(e.actions) for e in episodes]}


def model_policy(config, params, tokenizer, batch_size: int = 32, max_new_tokens: int = MAX_NEW_TOKENS["agent"],
                 matmul: str = "float32"):
    """A policy for :func:`run_episodes`: the model's greedy reply (first line) to each prompt."""
    def policy(prompts):
        texts = generate_texts(config, params, tokenizer, prompts, max_new_tokens, STOP["agent"], batch_size,
                               matmul=matmul)
        return [t.strip().split("\n")[0].strip() if t.strip() else "" for t in texts]
    return policy


def evaluate_agent(config, params, tokenizer, goals, items, batch_size: int = 32,
                   max_new_tokens: int = MAX_NEW_TOKENS["agent"], matmul: str = "float32") -> dict:
    """Held-out agent: episodes of the model's greedy actions; mean reward, success rate, per episode."""
    episodes = run_episodes(model_policy(config, params, tokenizer, batch_size, max_new_tokens, matmul), goals,
                            items)
    return {**agent_metrics(episodes), "actions": [e.actions for e in episodes]}


# ---------------------------------------------------------------- teacher-forced fitness


def fitness_pairs(task: str, split: str = "fitness", seed: int = 0, limit: int | None = None):
    """The datapoints fitness scores: (prompt, target) pairs as :func:`training_pairs` gives them."""
    return training_pairs(task, split, seed, limit)


def fitness_batch(tokenizer, task: str, split: str = "fitness", seed: int = 0, limit: int | None = None,
                  mode: str = "full", length: int | None = None) -> Batch:
    """Padded token and target arrays of a split's datapoints for teacher-forced scoring.

    mode "full": every target token and the end token are scored; "answer" (math only): only the final
    answer's tokens after ``The answer is`` and the end token, given the gold solution before them.
    """
    if mode not in ("full", "answer"):
        raise ConfigError(f"unknown fitness mode {mode!r}; use 'full' or 'answer'.")
    if mode == "answer" and task != "math":
        raise ConfigError("mode 'answer' needs the math task (agent actions have no final-answer phrase).")
    pairs = fitness_pairs(task, split, seed, limit)
    if mode == "answer":
        cut = [t.rindex(word_problems.ANSWER_PHRASE) + len(word_problems.ANSWER_PHRASE) for _, t in pairs]
        pairs = [(p + t[:c], t[c:]) for (p, t), c in zip(pairs, cut)]
    return encode(tokenizer, pairs, length)


def fitness_groups(task: str, split: str = "fitness", seed: int = 0, limit: int | None = None) -> np.ndarray:
    """For each datapoint of :func:`fitness_batch`, the index of its problem (math) or goal (agent: a goal
    has one datapoint per expert step)."""
    _check_task(task)
    if task == "math":
        return np.arange(len(math_problems(split, seed, limit)), dtype=np.int32)
    items = catalogue(seed)
    return np.asarray([g for g, goal in enumerate(shop_goals(split, seed, limit))
                       for _ in shop.expert_episode(items, goal)], np.int32)


def episode_scores(step_scores, groups, num_groups: int):
    """Per goal, 1 where the model gets every expert step right (then its greedy episode is the expert's,
    reward 1), else 0; jit-able with ``num_groups`` static. Mean step score per goal: use
    ``jax.ops.segment_sum(step_scores, groups, num_groups) / counts``."""
    return jax.ops.segment_min(jnp.asarray(step_scores), jnp.asarray(groups), num_segments=num_groups)


def score_function(config, batch: Batch, eos_ids=(), batch_size: int = 32, matmul: str = "float32"):
    """``scores(params) -> [N]`` in {0, 1}: teacher-forced exact match of each datapoint of ``batch``
    (jit-able; ``batch_size`` rows per forward pass bound the memory; logits only at answer tokens, rows
    bucketed by length, the shared prompt prefix once: :mod:`m2n2_jax.llm.scoring`)."""
    plan = scoring.plan_rows(batch.tokens, batch.targets, batch_size)
    return scoring.exact_match_scorer(config, plan, eos_ids, matmul=matmul)

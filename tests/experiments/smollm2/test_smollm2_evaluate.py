"""Prompts, held-out evaluation and teacher-forced fitness of the two LLM tasks, against plain loops.

A tiny random Llama with a byte-level tokenizer (256 byte tokens plus <|im_start|> and <|im_end|>)
stands in for SmolLM2; the real SmolLM2 is used only where it is already cached.
"""
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from m2n2_jax.errors import ConfigError  # noqa: E402
from experiments.smollm2 import evaluate, word_problems, shop  # noqa: E402
from m2n2_jax.llm import model  # noqa: E402
from m2n2_jax.llm.config import LlamaConfig  # noqa: E402
from m2n2_jax.llm.data import Batch, encode  # noqa: E402
from m2n2_jax.llm.gguf_file import _byte_alphabet  # noqa: E402
from m2n2_jax.llm.hf_tokenizer import HFTokenizer  # noqa: E402

BUFFER = 768  # the plain reference decodes in one right-padded buffer of this many tokens (one compile)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = _byte_alphabet()
    tok = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")])
    end = tok.token_to_id("<|im_end|>")
    return HFTokenizer(tok, None, [end], end, add_bos=False)


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    params = model.init_params(config, seed=1)
    params = jax.tree.map(lambda x: x * 4 if x.ndim == 2 else x, params)  # sharper logits: fewer near-ties
    return config, params


def plain_greedy(config, params, tokenizer, prompt: str, max_new_tokens: int, stop=()) -> str:
    """One prompt, no cache: the whole sequence through the model at every step, argmax of the last real position."""
    ids = tokenizer.encode_prompt(prompt)
    new = []
    for _ in range(max_new_tokens):
        seq = ids + new
        buffer = np.zeros((1, BUFFER), np.int32)
        buffer[0, :len(seq)] = seq
        token = int(jnp.argmax(model.forward(config, params, jnp.asarray(buffer))[0, len(seq) - 1]))
        new.append(token)
        if token in tokenizer.eos_ids or any(s in tokenizer.decode(new) for s in stop):
            break
    while new and new[-1] in tokenizer.eos_ids:
        new = new[:-1]
    return tokenizer.decode(new)


def test_format_prompt_and_training_pairs():
    prompt = evaluate.format_prompt("math", "What is 2 + 3?")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n" in prompt
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate.format_prompt("chess", "e4")
    problems = evaluate.math_problems("train", limit=5)
    assert evaluate.training_pairs("math", "train", limit=5) == [
        (evaluate.format_prompt("math", p.prompt), p.target) for p in problems]
    goals = evaluate.shop_goals("train", limit=3)
    pairs = evaluate.training_pairs("agent", "train", limit=3)
    want = [(evaluate.format_prompt("agent", shop.observation(s)), a)
            for g in goals for s, a in shop.expert_episode(evaluate.catalogue(), g)]
    assert pairs == want and len(pairs) >= 3 * 4
    assert evaluate.fitness_pairs("math", "fitness", limit=2) == evaluate.training_pairs("math", "fitness", limit=2)


def test_format_prompt_is_smollm2_chat_template(smollm2_gguf):
    """The hand-written ChatML is what SmolLM2's own template renders with a system message."""
    pytest.importorskip("jinja2")
    path = smollm2_gguf
    import jinja2

    from m2n2_jax.llm import gguf_file

    template = gguf_file.metadata(path)["tokenizer.chat_template"]
    for task in evaluate.TASKS:
        rendered = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
            messages=[{"role": "system", "content": evaluate.SYSTEM[task]}, {"role": "user", "content": "Hi?"}],
            add_generation_prompt=True)
        assert rendered == evaluate.format_prompt(task, "Hi?")


def _fake_policy_one(prompt: str) -> str:
    """A deterministic policy of one prompt: mostly valid actions, sometimes nonsense."""
    h = zlib.crc32(prompt.encode())
    user = prompt.split("<|im_start|>user\n")[1]
    goal = user.split("\n")[0]
    actions = user.split("Actions: ")[1].split("\n")[0].split(" click[")
    if "search[<query>]" in actions[0]:
        words = goal.replace(",", "").split()
        return "search[" + " ".join(words[3 + h % 3:6 + h % 3]) + "]" if h % 5 else "click[i100]"
    options = [a if a.startswith("click[") else "click[" + a for a in actions]
    return options[h % len(options)] if h % 7 else "nonsense"


def test_run_episodes_equals_a_plain_loop():
    goals = evaluate.shop_goals("test", limit=12)
    items = evaluate.catalogue()
    calls = []

    def policy(prompts):
        calls.append(len(prompts))
        return [_fake_policy_one(p) for p in prompts]

    episodes = evaluate.run_episodes(policy, goals, items)
    for goal, episode in zip(goals, episodes):
        state, actions = shop.reset(goal), []
        while not state.done:
            action = _fake_policy_one(evaluate.format_prompt("agent", shop.observation(state)))
            actions.append(action)
            state = shop.step(items, state, action)
        assert episode.actions == actions and episode.reward == state.reward and episode.final == state
    assert calls[0] == len(goals) and calls == sorted(calls, reverse=True) and len(calls) <= shop.MAX_STEPS
    metrics = evaluate.agent_metrics(episodes)
    assert metrics["mean_reward"] == pytest.approx(np.mean([e.reward for e in episodes]))
    assert metrics["success_rate"] == np.mean([e.reward == 1.0 for e in episodes])

    expert = dict(evaluate.training_pairs("agent", "test", limit=12))  # prompt -> the expert's action
    done = evaluate.agent_metrics(evaluate.run_episodes(lambda ps: [expert[p] for p in ps], goals, items))
    assert done["success_rate"] == 1.0 and done["mean_reward"] == 1.0


def test_batched_greedy_evaluation_equals_one_prompt_at_a_time(tiny, tokenizer):
    config, params = tiny
    problems = evaluate.math_problems("test", limit=3)
    prompts = [evaluate.format_prompt("math", p.prompt) for p in problems]
    prompts += [evaluate.format_prompt("agent", shop.observation(shop.reset(g)))
                for g in evaluate.shop_goals("test", limit=2)]
    want = [plain_greedy(config, params, tokenizer, p, 6, stop=("\n",)) for p in prompts]
    got = evaluate.generate_texts(config, params, tokenizer, prompts, 6, stop=("\n",), batch_size=4)
    assert got == want
    assert len(set(want)) > 1  # the replies differ: the comparison can tell prompts apart

    result = evaluate.evaluate_math(config, params, tokenizer, problems, batch_size=2, max_new_tokens=6)
    assert result["texts"] == want[:3]
    assert result["accuracy"] == word_problems.math_accuracy(problems, want[:3])


def test_agent_evaluation_equals_a_plain_loop(tiny, tokenizer):
    config, params = tiny
    goals, items = evaluate.shop_goals("test", limit=2), evaluate.catalogue()
    result = evaluate.evaluate_agent(config, params, tokenizer, goals, items, batch_size=2, max_new_tokens=5)
    for goal, actions, reward in zip(goals, result["actions"], result["rewards"]):
        state, want = shop.reset(goal), []
        while not state.done:
            text = plain_greedy(config, params, tokenizer, evaluate.format_prompt("agent", shop.observation(state)),
                                5, stop=("\n",))
            want.append(text.strip().split("\n")[0].strip())
            state = shop.step(items, state, want[-1])
        assert actions == want and reward == state.reward


@pytest.mark.parametrize("task,mode", [("math", "full"), ("math", "answer"), ("agent", "full")])
def test_teacher_forced_scores_equal_a_plain_loop(tiny, tokenizer, task, mode):
    config, params = tiny
    limit = 1 if task == "agent" else 2  # one goal: its expert's four or five steps
    batch = evaluate.fitness_batch(tokenizer, task, "fitness", limit=limit, mode=mode)
    pairs = evaluate.fitness_pairs(task, "fitness", limit=limit)
    assert len(batch) == len(pairs)
    scores = np.asarray(jax.jit(evaluate.score_function(config, batch, tokenizer.eos_ids, batch_size=3))(params))
    for row, (prompt, target) in enumerate(pairs):
        prefix, answer = tokenizer.split(prompt, target)
        ids = prefix + answer + [tokenizer.eos_id]
        scored = np.flatnonzero(batch.targets[row])
        assert list(batch.tokens[row, :len(ids)]) == ids
        if mode == "full":
            assert list(scored) == list(range(len(prefix), len(ids)))
        else:  # the final answer " N." and the end token only
            assert tokenizer.decode(batch.tokens[row, scored[:-1]]) == target[target.rindex(" "):]
        buffer = np.zeros((1, BUFFER), np.int32)  # right padding: causal attention never sees it
        buffer[0, :len(ids)] = ids
        logits = model.forward(config, params, jnp.asarray(buffer))[0]
        want = all(int(jnp.argmax(logits[i - 1])) == ids[i] for i in scored)
        assert scores[row] == float(want)


def test_teacher_forcing_scores_what_greedy_writes(tiny, tokenizer):
    """Targets made of the model's own greedy tokens score 1; changing any one of them scores 0."""
    from m2n2_jax.llm import generate

    config, params = tiny
    prompts = [tokenizer.encode_prompt(p) for p, _ in evaluate.training_pairs("math", "test", limit=3)]
    new = generate.greedy(config, params, prompts, 5, eos_ids=[-1])
    rows = [p + n for p, n in zip(prompts, new)]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    targets = np.zeros((len(rows), width), np.float32)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        tokens[i, :len(r)], targets[i, len(p):len(r)] = r, 1
    scores = evaluate.score_function(config, Batch(tokens, np.asarray([len(p) for p in prompts]), targets))
    assert np.asarray(scores(params)).tolist() == [1.0] * len(rows)
    for position in (0, 4):  # the first and the last generated token
        changed = tokens.copy()
        for i, p in enumerate(prompts):
            changed[i, len(p) + position] = (changed[i, len(p) + position] + 1) % 256
        perturbed = evaluate.score_function(config, Batch(changed, np.asarray([len(p) for p in prompts]), targets))
        assert np.asarray(perturbed(params)).tolist() == [0.0] * len(rows)


def test_episode_scores_need_every_step():
    groups = evaluate.fitness_groups("agent", "fitness", limit=3)
    counts = [len(shop.expert_episode(evaluate.catalogue(), g)) for g in evaluate.shop_goals("fitness", limit=3)]
    assert groups.tolist() == [g for g, c in enumerate(counts) for _ in range(c)]
    assert len(groups) == len(evaluate.fitness_pairs("agent", "fitness", limit=3))
    steps = np.ones(len(groups), np.float32)
    steps[counts[0]] = 0.0  # the first step of the second goal is wrong
    got = jax.jit(evaluate.episode_scores, static_argnums=2)(steps, groups, 3)
    assert np.asarray(got).tolist() == [1.0, 0.0, 1.0]
    assert evaluate.fitness_groups("math", "fitness", limit=4).tolist() == [0, 1, 2, 3]


def test_bad_arguments():
    tok = object()
    with pytest.raises(ConfigError, match="fitness mode"):
        evaluate.fitness_batch(tok, "math", mode="likelihood")
    with pytest.raises(ConfigError, match="needs the math task"):
        evaluate.fitness_batch(tok, "agent", mode="answer")
    with pytest.raises(ConfigError, match="unknown split"):
        evaluate.math_problems("dev")
    with pytest.raises(ConfigError, match="answered 0 prompts"):
        evaluate.run_episodes(lambda ps: [], evaluate.shop_goals("test", limit=1), evaluate.catalogue())


def test_teacher_forcing_agrees_with_greedy_on_smollm2(smollm2_gguf):
    """On the real model and tokenizer: a reply greedy decoding wrote (and ended) scores 1 as a
    target whenever its text re-tokenizes to the same ids; the reply with one more word scores 0."""
    from m2n2_jax.llm import checkpoint, generate, hf_tokenizer

    path = smollm2_gguf
    tok = hf_tokenizer.load_hf_tokenizer(path)
    for task in evaluate.TASKS:  # training targets: generation starts where scoring's prefix ends
        for prompt, target in evaluate.training_pairs(task, "test", limit=25):
            prefix, answer = tok.split(prompt, target)
            assert prefix == tok.encode_prompt(prompt) and tok.decode(answer) == target
    config, params = checkpoint.load(path)
    questions = ["What is 17 + 25? Reply with the number only.", "Name the capital of France in one word.",
                 "What colour is the sky? One word.", "Say hello."]
    prompts = [evaluate.format_prompt("math", q) for q in questions]
    new = generate.greedy(config, params, [tok.encode_prompt(p) for p in prompts], 16, tok.eos_ids)
    pairs, extended = [], []
    for prompt, ids in zip(prompts, new):
        if ids[-1] in tok.eos_ids:
            reply = tok.decode(ids[:-1])
            if tok.split(prompt, reply)[1] == ids[:-1]:  # canonical tokenization
                pairs.append((prompt, reply))
                extended.append((prompt, reply + " Then buy."))
    assert len(pairs) >= 2, [tok.decode(n) for n in new]  # the base model ends these replies within 16 tokens
    batch = encode(tok, pairs + extended)
    scores = np.asarray(evaluate.score_function(config, batch, tok.eos_ids, batch_size=8)(params))
    assert scores.tolist() == [1.0] * len(pairs) + [0.0] * len(extended)

"""The diffusion-merge application: prompts, sampler, judge, training masks, merge validity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import M2N2, method_config
from m2n2_jax.diffusion import classifier as clf
from m2n2_jax.diffusion import merge, model, pipeline, prompts, task, train
from m2n2_jax.errors import ConfigError, M2N2Error
from m2n2_jax.tasks.digits import load_digits_split

TINY = model.ModelConfig(embed_dim=8, hidden=16, time_freqs=2, sample_steps=3)


# ---- prompts and tokenizer -------------------------------------------------

def test_prompts_are_deterministic_and_languages_share_no_token():
    texts, ids, classes = prompts.prompts("japanese")
    texts2, ids2, classes2 = prompts.prompts("japanese")
    assert texts == texts2 and np.array_equal(ids, ids2) and np.array_equal(classes, classes2)
    assert texts[:3] == ["rei", "ichi", "ni"] and texts[13] == "suuji no san"
    assert list(classes[:10]) == list(range(10)) and ids.shape == (40, prompts.MAX_TOKENS)
    assert list(prompts.tokenize("digit seven")) == [prompts.TOKEN_ID["digit"], prompts.TOKEN_ID["seven"], 0, 0]
    en, ja = prompts.language_token_ids("english"), prompts.language_token_ids("japanese")
    sym = prompts.language_token_ids("symbol")
    assert not set(en) & set(ja) and not set(sym) & (set(en) | set(ja))
    assert len(prompts.VOCAB) == len(set(prompts.VOCAB))


@pytest.mark.parametrize("bad", ["seven eleven", "", "a b c d e"])
def test_bad_prompts_raise_an_m2n2_error(bad):
    with pytest.raises(M2N2Error):
        prompts.tokenize(bad)
    with pytest.raises(M2N2Error):
        prompts.language("klingon")


# ---- sampler ---------------------------------------------------------------

def test_sampling_is_deterministic_for_a_fixed_key_and_matches_a_python_euler_loop():
    params = model.init_params(TINY, jax.random.PRNGKey(0))
    _, ids, _ = prompts.prompts("english", templates=[1])
    tokens = jnp.asarray(ids[:4])
    noise = model.fixed_noise(jax.random.PRNGKey(3), 4, 2)
    draw = jax.jit(model.sample_prompts, static_argnums=0)
    a = draw(TINY, params, tokens, noise)
    b = draw(TINY, params, tokens, model.fixed_noise(jax.random.PRNGKey(3), 4, 2))
    c = draw(TINY, params, tokens, model.fixed_noise(jax.random.PRNGKey(4), 4, 2))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # Plain reference: x <- x + dt * v(x, i dt) for i = 0..steps-1.
    net = model.FlowModel(TINY)
    x = np.asarray(noise, np.float64)
    toks = jnp.broadcast_to(tokens[:, None, :], (4, 2, prompts.MAX_TOKENS))
    velocity = jax.jit(net.apply)
    for i in range(TINY.sample_steps):
        t = jnp.full((4, 2), i / TINY.sample_steps)
        x = x + np.asarray(velocity(params, jnp.asarray(x, jnp.float32), t, toks), np.float64) / TINY.sample_steps
    np.testing.assert_allclose(np.asarray(a), x, rtol=1e-4, atol=1e-5)


def test_model_space_round_trip():
    raw = np.array([0.0, 4.0, 16.0])
    np.testing.assert_allclose(np.asarray(model.to_model_space(raw)), [-1.0, -0.5, 1.0])
    np.testing.assert_allclose(np.asarray(model.to_raw(model.to_model_space(raw))), raw)
    np.testing.assert_allclose(np.asarray(model.to_raw(jnp.array([-3.0, 5.0]))), [0.0, 16.0])


# ---- judge classifier and scores ---------------------------------------------

@pytest.fixture(scope="module")
def judge():
    return clf.train_classifier(jax.random.PRNGKey(0), steps=300)


def _numpy_probs(params, raw):
    p = params["params"]
    h = np.maximum(raw / 16.0 @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"]), 0)
    z = h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"])
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_judge_scores_real_digits_of_known_class_high_and_matches_numpy(judge):
    params, accuracy = judge
    _, (x_test, y_test) = load_digits_split()
    assert accuracy > 0.8
    probs = np.asarray(clf.class_probability(params, x_test, y_test))
    want = _numpy_probs(params, x_test.astype(np.float64))
    np.testing.assert_allclose(probs, want[np.arange(len(y_test)), y_test], rtol=1e-4, atol=1e-6)
    assert probs.mean() > 0.7
    wrong = (y_test + 1) % 10
    assert np.asarray(clf.class_probability(params, x_test, wrong)).mean() < 0.1
    correct = np.asarray(clf.is_correct(params, x_test, y_test))
    np.testing.assert_array_equal(correct, (want.argmax(-1) == y_test).astype(np.float32))
    assert correct.mean() == pytest.approx(accuracy)


def test_prompt_scores_are_judge_probabilities_per_prompt_and_sample(judge):
    params_clf, _ = judge
    gen = model.init_params(TINY, jax.random.PRNGKey(1))
    ps = task.prompt_set("japanese", jax.random.PRNGKey(2), 3, templates=[0])
    scores = np.asarray(task.prompt_scores(TINY, params_clf, gen, ps))
    images = np.asarray(task.generate(TINY, gen, ps))            # [10, 3, 64]
    assert scores.shape == (30,) and images.min() >= 0 and images.max() <= 16
    want = _numpy_probs(params_clf, images.reshape(30, 64).astype(np.float64))
    np.testing.assert_allclose(scores, want[np.arange(30), np.repeat(np.arange(10), 3)], rtol=1e-4, atol=1e-6)
    acc = float(task.prompt_accuracy(TINY, params_clf, gen, ps))
    assert acc == pytest.approx(np.mean(want.argmax(-1) == np.repeat(np.arange(10), 3)))


# ---- fine-tuning touches only what it should ----------------------------------

def test_fine_tunes_leave_other_languages_and_frozen_parts_unchanged():
    (x, y), _ = load_digits_split()
    cfg = train.TrainConfig(steps=3, batch=8, lr=1e-2)
    base, _ = train.train_base(TINY, x[:50], y[:50], jax.random.PRNGKey(0), cfg)
    emb = lambda p: np.asarray(p["params"]["text"]["embed"]["embedding"])
    words = np.setdiff1d(np.arange(len(prompts.VOCAB)), prompts.language_token_ids("symbol"))
    assert np.all(emb(base)[words] == 0)
    en, ja = prompts.language_token_ids("english"), prompts.language_token_ids("japanese")
    sym = prompts.language_token_ids("symbol")
    b, _ = train.fine_tune(TINY, base, x[:50], y[:50], "english", jax.random.PRNGKey(1), cfg, "all")
    assert np.array_equal(emb(b)[ja], emb(base)[ja]) and np.array_equal(emb(b)[sym], emb(base)[sym])
    assert not np.array_equal(emb(b)[en], emb(base)[en])
    a, _ = train.fine_tune(TINY, base, x[:50], y[:50], "japanese", jax.random.PRNGKey(2), cfg, "embeddings")
    assert np.array_equal(emb(a)[en], emb(base)[en]) and not np.array_equal(emb(a)[ja], emb(base)[ja])
    same = jax.tree.map(lambda u, v: bool(np.array_equal(u, v)), a["params"], base["params"])
    assert all(jax.tree.leaves({k: v for k, v in same.items() if k != "text"}))
    with pytest.raises(ConfigError):
        train.gradient_mask(base, "everything")


# ---- merges are piecewise combinations of the seeds ----------------------------

def test_piecewise_fit_recovers_known_segments_and_rejects_non_merges():
    rng = np.random.default_rng(0)
    seeds = rng.normal(size=(3, 300))
    v = np.concatenate([[0.2, 0.8, 0.0] @ seeds[:, :120], [0.5, 0.1, 0.4] @ seeds[:, 120:]])
    fit = merge.piecewise_fit(v, seeds)
    assert fit.num_segments == 2 and list(fit.starts) == [0, 120]
    np.testing.assert_allclose(fit.coeffs, [[0.2, 0.8, 0.0], [0.5, 0.1, 0.4]], atol=1e-9)
    assert merge.piecewise_fit(rng.normal(size=300), seeds).num_segments > 40


def test_m2n2_merges_without_mutation_are_piecewise_combinations_of_the_seeds():
    rng = np.random.default_rng(1)
    seeds = jnp.asarray(rng.normal(size=(3, 500)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(20,)), jnp.float32)

    def score(x):
        return jnp.exp(-(x[:20] - target) ** 2)

    config = method_config("m2n2", mutation_std=0.0, children_per_step=4, archive_size=6)
    strat = M2N2(config, seeds[0])
    params = strat.default_params
    state = strat.init(jax.random.PRNGKey(1), seeds, jax.vmap(score)(seeds), params)

    @jax.jit
    def step(state, key):
        children, state = strat.ask(key, state, params)
        return strat.tell(key, children, jax.vmap(score)(children), state, params)[0], None

    state, _ = jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(0), 6))
    assert int(state.inserted) > 3
    for member in np.asarray(state.params):
        fit = merge.piecewise_fit(member, np.asarray(seeds), rtol=1e-5)
        assert fit.num_segments <= 1 + int(state.evaluated)
        assert fit.max_residual <= 1e-5
    noisy = np.asarray(state.params[0]) + 1e-2 * rng.normal(size=500)
    assert merge.piecewise_fit(noisy, np.asarray(seeds), rtol=1e-5).num_segments > 100


def test_slerp_sweep_and_average():
    x, y = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    ratio, values = merge.slerp_sweep(lambda v: -jnp.abs(v[0] - v[1]), x, y, np.linspace(0, 1, 5))
    assert ratio == 0.5 and values.shape == (5,)
    np.testing.assert_allclose(np.asarray(merge.linear_average(jnp.stack([x, y]))), [0.5, 0.5])


def test_pipeline_config_rejects_bad_settings():
    with pytest.raises(ConfigError):
        pipeline.PipelineConfig(lang_b="japanese")
    with pytest.raises(ConfigError, match="multiple of children_per_step"):
        pipeline.PipelineConfig(forward_passes=10, children_per_step=4)

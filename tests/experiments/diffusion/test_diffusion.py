"""The diffusion-merge application: sampler, judge, training masks, continuous scoring, merge validity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import M2N2, method_config
from experiments.diffusion import classifier as clf
from experiments.diffusion import baselines, model, pipeline, prompts, task, train
from m2n2_jax.errors import ConfigError, M2N2Error
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.algorithm.groups import GroupSpec
from m2n2_jax.tasks.digits import load_digits_split

TINY = model.ModelConfig(embed_dim=8, hidden=16, heads=2, blocks=1, time_freqs=2, sample_steps=3)


# ---- prompts -----------------------------------------------------------------

def test_prompts_are_deterministic_and_languages_share_no_token():
    texts, ids, classes = prompts.prompts("japanese")
    assert texts[:3] == ["rei", "ichi", "ni"] and texts[13] == "suuji no san"
    assert list(classes[:10]) == list(range(10)) and ids.shape == (40, prompts.MAX_TOKENS)
    en, ja = prompts.language_token_ids("english"), prompts.language_token_ids("japanese")
    assert not set(en) & set(ja)
    texts, tokens = task.captions("english", [3, 3, 7])
    assert texts == ["three", "digit three", "the number seven"] and tokens.shape == (3, prompts.MAX_TOKENS)
    with pytest.raises(M2N2Error):
        prompts.tokenize("seven eleven")


# ---- sampler -------------------------------------------------------------------

def test_sampling_is_deterministic_for_a_key_and_matches_a_python_euler_loop():
    params = model.init_params(TINY, jax.random.PRNGKey(0))
    _, ids, _ = prompts.prompts("english", templates=[1])
    tokens = jnp.asarray(ids[:4])
    draw = jax.jit(model.sample, static_argnums=0)
    a = draw(TINY, params, tokens, model.fixed_noise(jax.random.PRNGKey(3), 4, 2))
    b = draw(TINY, params, tokens, model.fixed_noise(jax.random.PRNGKey(3), 4, 2))
    c = draw(TINY, params, tokens, model.fixed_noise(jax.random.PRNGKey(4), 4, 2))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.allclose(np.asarray(a), np.asarray(c))
    # Plain reference: x <- x + dt * v(x, i dt) with the full model's velocity, prompt re-encoded each step.
    x = np.asarray(model.fixed_noise(jax.random.PRNGKey(3), 4, 2), np.float64)
    toks = jnp.broadcast_to(tokens[:, None, :], (4, 2, prompts.MAX_TOKENS))
    vel = jax.jit(lambda p, x, t, k: model.velocity(TINY, p, x, t, k))
    for i in range(TINY.sample_steps):
        t = jnp.full((4, 2), i / TINY.sample_steps)
        x = x + np.asarray(vel(params, jnp.asarray(x, jnp.float32), t, toks), np.float64) / TINY.sample_steps
    np.testing.assert_allclose(np.asarray(a), x, rtol=1e-4, atol=1e-5)
    # The prompt matters only through cross-attention: another caption gives other images.
    d = draw(TINY, params, jnp.asarray(ids[4:8]), model.fixed_noise(jax.random.PRNGKey(3), 4, 2))
    assert not np.allclose(np.asarray(a), np.asarray(d))


# ---- judge -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge():
    return clf.train_judge(jax.random.PRNGKey(0), steps=300)


def test_judge_similarity_and_fid_against_plain_formulas(judge):
    params, accuracy = judge
    _, (x_test, y_test) = load_digits_split()
    assert accuracy > 0.8
    f = np.asarray(clf.features(params, x_test[:50]), np.float64)
    g = np.asarray(clf.features(params, x_test[50:100]), np.float64)
    sim = np.asarray(clf.similarity(f, g))
    want = (1 + np.sum(f * g, 1) / np.linalg.norm(f, axis=1) / np.linalg.norm(g, axis=1)) / 2
    np.testing.assert_allclose(sim, want, rtol=1e-5)
    assert np.all((sim >= 0) & (sim <= 1))
    np.testing.assert_allclose(np.asarray(clf.similarity(f, f)), 1.0, rtol=1e-6)
    same = y_test[:50] == y_test[50:100]
    assert sim[same].mean() > sim[~same].mean() + 0.2           # centred features separate classes
    assert clf.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(f.shape[1], dtype=np.float64)
    assert clf.frechet_distance(f + shift, f) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_pair_scores_are_the_similarity_of_each_generated_and_real_image(judge):
    params, _ = judge
    _, (x_test, y_test) = load_digits_split()
    gen = model.init_params(TINY, jax.random.PRNGKey(1))
    ps = task.pair_set("japanese", params, x_test[:6], y_test[:6], jax.random.PRNGKey(2), samples=2)
    scores = np.asarray(task.pair_scores(TINY, params, gen, ps))
    images = np.asarray(task.generate(TINY, gen, ps))               # [6, 2, 64]
    want = clf.similarity(clf.features(params, images.reshape(12, 64)),
                          clf.features(params, np.repeat(x_test[:6], 2, axis=0)))
    assert scores.shape == (12,) and images.min() >= 0 and images.max() <= 16
    np.testing.assert_allclose(scores, np.asarray(want), rtol=1e-5, atol=1e-6)


# ---- training touches only what it should ------------------------------------------

def test_fine_tunes_leave_the_encoder_or_the_other_language_unchanged():
    (x, y), _ = load_digits_split()
    cfg = train.TrainConfig(steps=2, batch=8, lr=1e-2)
    base = model.init_params(TINY, jax.random.PRNGKey(0))
    en_ids, ja_ids = prompts.language_token_ids("english"), prompts.language_token_ids("japanese")
    emb = lambda p: np.asarray(p["encoder"]["params"]["embed"]["embedding"])
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(np.array_equal(u, v)), a, b)))
    en, _ = train.fine_tune(TINY, base, x[:40], y[:40], "english", jax.random.PRNGKey(1), cfg, "denoiser")
    assert same(en["encoder"], base["encoder"]) and not same(en["denoiser"], base["denoiser"])
    ja, _ = train.fine_tune(TINY, base, x[:40], y[:40], "japanese", jax.random.PRNGKey(2), cfg, "all")
    assert np.array_equal(emb(ja)[en_ids], emb(base)[en_ids]) and not np.array_equal(emb(ja)[ja_ids], emb(base)[ja_ids])
    with pytest.raises(ConfigError):
        train.gradient_mask(base, "everything")


# ---- merges: valid merges of the seeds, encoder untouched -------------------------------

def test_the_merged_model_is_a_merge_of_its_seeds_with_the_encoder_untouched(judge):
    judge_params, _ = judge
    _, (x_test, y_test) = load_digits_split()
    base = model.init_params(TINY, jax.random.PRNGKey(0))
    layout = VectorLayout.of(base["denoiser"])
    x0 = layout.ravel(base["denoiser"])
    seeds = jnp.stack([x0 + 0.3 * jax.random.normal(jax.random.PRNGKey(k), x0.shape) for k in range(4)])
    ja_encoder = jax.tree.map(lambda p: p + 0.1, base["encoder"])
    groups = GroupSpec.from_params(layout, base["denoiser"], task.attention_group, ["attention", "other"])
    assert groups.sizes().min() > 0
    ps = task.pair_set("japanese", judge_params, x_test[:8], y_test[:8], jax.random.PRNGKey(5))

    def score(x):
        return task.pair_scores(TINY, judge_params, task.full_params(layout, ja_encoder, x), ps)

    cfg = pipeline.PipelineConfig(forward_passes=24, children_per_step=4, archive_size=6)
    result = pipeline.merge_runs("m2n2", task.merge_task(layout, seeds, score, groups), cfg, [0, 1], log=lambda m: None)
    archives = result.state.archive
    curve = result.metrics["best_train_score"]
    assert result.config["subtract_worst"] and result.config["mutation_std"] == 0 and result.config["groups"]
    assert np.all(curve[:, -1] >= curve[:, 0]) and int(archives.evaluated[0]) == 24
    vectors = result.best
    children = np.asarray(archives.params)[np.asarray(archives.filled)]
    assert len(children) > 8                                       # children entered the archives
    for member in children:
        fit = baselines.piecewise_fit(member, np.asarray(seeds), rtol=1e-5)
        assert fit.max_residual <= 1e-5 and fit.num_segments <= 1 + 2 * 24 * groups.num_groups
    noisy = vectors[0] + 1e-2 * np.random.default_rng(0).normal(size=vectors[0].shape)
    assert baselines.piecewise_fit(noisy, np.asarray(seeds), rtol=1e-5).num_segments > 100
    full = task.full_params(layout, ja_encoder, jnp.asarray(vectors[0]))
    assert all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(np.array_equal(u, v)), full["encoder"], ja_encoder)))
    np.testing.assert_array_equal(np.asarray(layout.ravel(full["denoiser"])), vectors[0])


def test_piecewise_fit_recovers_known_segments():
    rng = np.random.default_rng(0)
    seeds = rng.normal(size=(3, 300))
    v = np.concatenate([[0.2, 0.8, 0.0] @ seeds[:, :120], [0.5, 0.1, 0.4] @ seeds[:, 120:]])
    fit = baselines.piecewise_fit(v, seeds)
    assert fit.num_segments == 2 and list(fit.starts) == [0, 120]
    assert baselines.piecewise_fit(rng.normal(size=300), seeds).num_segments > 40


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
        fit = baselines.piecewise_fit(member, np.asarray(seeds), rtol=1e-5)
        assert fit.num_segments <= 1 + int(state.evaluated)
        assert fit.max_residual <= 1e-5
    noisy = np.asarray(state.params[0]) + 1e-2 * rng.normal(size=500)
    assert baselines.piecewise_fit(noisy, np.asarray(seeds), rtol=1e-5).num_segments > 100


def test_slerp_sweep_and_average():
    x, y = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    ratio, values = baselines.slerp_sweep(lambda v: -jnp.abs(v[0] - v[1]), x, y, np.linspace(0, 1, 5))
    assert ratio == 0.5 and values.shape == (5,)
    np.testing.assert_allclose(np.asarray(baselines.linear_average(jnp.stack([x, y]))), [0.5, 0.5])
def test_layer_merge_is_a_convex_combination_per_layer():
    base = model.init_params(TINY, jax.random.PRNGKey(0))["denoiser"]
    layout = VectorLayout.of(base)
    ids, names = baselines.layer_ids(layout, base)
    assert "cross_attn0" in names and "out" in names and ids.max() == len(names) - 1
    seeds = jax.random.normal(jax.random.PRNGKey(1), (3, layout.size))
    logits = jax.random.normal(jax.random.PRNGKey(2), (len(names), 3))
    got = np.asarray(baselines.layer_merge(seeds, ids, logits))
    w = np.exp(np.asarray(logits, np.float64))
    w /= w.sum(1, keepdims=True)
    want = np.einsum("dk,kd->d", w[ids], np.asarray(seeds, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pipeline_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="unknown methods"):
        pipeline.PipelineConfig(methods=("m2n2", "nope"))
    with pytest.raises(ConfigError, match="multiple of children_per_step"):
        pipeline.PipelineConfig(forward_passes=10, children_per_step=4)
    with pytest.raises(ConfigError, match="Japanese"):
        pipeline.PipelineConfig(seeds=pipeline.DEFAULT_SEEDS[1:])
    with pytest.raises(ConfigError, match="fitness_samples"):
        pipeline.PipelineConfig(fitness_samples=0)

"""bfloat16 scoring: operands rounded to bf16, float32 accumulation, test metrics untouched.

The reference is a float64 numpy model with bf16-rounded operands. CPUs differ in
how they accumulate bf16 products (AVX512-BF16 and AMX pair or tile the sums,
others convert to float32 first), so the comparison uses a rigorous bound for
float32 accumulation in any order instead of one CPU's rounding:
|computed - exact| <= gamma_n * sum_i |a_i b_i| with gamma_n = n u / (1 - n u),
u = 2**-24 (a product of two bf16 numbers is exact in float32).
"""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from m2n2_jax.tasks import digits_task
from m2n2_jax.tasks.digits import load_digits_split
from m2n2_jax.tasks.classification import MLP, mixed_precision_dot, mlp_layout

U32 = 2.0 ** -24


def bf16(a):
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def gamma(n):
    return n * U32 / (1 - n * U32)


def numpy_logits(params, x, round_to_bf16):
    """The MLP in float64 numpy, with the matmul operands rounded to bf16 or not."""
    p = params["params"]
    r = bf16 if round_to_bf16 else (lambda a: np.asarray(a, np.float64))
    h = np.maximum(r(x) @ r(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"], np.float64), 0)
    return r(h) @ r(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"], np.float64)


def float32_accumulation_bound(params, x):
    """Elementwise bound on |bf16-operand, float32-accumulated logits - exact bf16-operand logits|.

    Layer 1: the float32 accumulation bound (the bias add is one more rounding).
    Layer 2: its inputs are the layer-1 outputs rounded to bf16; rounding is
    monotone, so a layer-1 error of at most e1 moves a rounded activation by at
    most the distance to the rounding of h +- e1 (a whole bf16 step when h sits
    next to a rounding boundary). That shift, plus layer 2's own accumulation
    bound, bounds the logits.
    """
    p = params["params"]
    w1, b1 = bf16(p["Dense_0"]["kernel"]), np.asarray(p["Dense_0"]["bias"], np.float64)
    w2, b2 = bf16(p["Dense_1"]["kernel"]), np.asarray(p["Dense_1"]["bias"], np.float64)
    xr = bf16(x)
    pre = xr @ w1 + b1
    e1 = 2 * gamma(w1.shape[0] + 1) * (np.abs(xr) @ np.abs(w1) + np.abs(b1)) + 1e-30
    relu = lambda a: np.maximum(a, 0)
    mid, low, high = bf16(relu(pre)), bf16(relu(pre - e1)), bf16(relu(pre + e1))
    shift = np.maximum(high - mid, mid - low)
    largest = np.maximum(np.abs(low), np.abs(high))
    e2 = 2 * gamma(w2.shape[0] + 1) * (largest @ np.abs(w2) + np.abs(b2))
    return shift @ np.abs(w2) + e2


def digits_inputs():
    (x, _), _ = load_digits_split()
    return x[:200] / 16.0 + 0.013  # not exactly representable in bf16, so rounding the inputs shows


def test_bf16_mlp_matches_numpy_with_rounded_operands_within_float32_accumulation_bound():
    x = digits_inputs()
    model = MLP(matmul_precision="bfloat16")
    params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 64)))
    got = np.asarray(model.apply(params, x), np.float64)
    want = numpy_logits(params, x, round_to_bf16=True)
    bound = float32_accumulation_bound(params, x)
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / bound)
    # the rounding is real: most float32 logits of the unrounded model fall outside the bound
    # (the bound is loose where an activation sits next to a bf16 rounding boundary)
    unrounded = numpy_logits(params, x, round_to_bf16=False)
    assert np.mean(np.abs(unrounded - want) > bound) > 0.5
    scale = np.abs(unrounded).max()
    np.testing.assert_allclose(np.asarray(MLP().apply(params, x)), unrounded, atol=2e-6 * scale)


def test_float32_accumulation_bound_rejects_bf16_accumulation():
    """The bound has teeth: a dot that accumulates (or outputs) in bf16 breaks it."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 256)).astype(np.float32)
    b = rng.normal(size=(256, 32)).astype(np.float32)
    exact = bf16(a) @ bf16(b)
    bound = gamma(256) * (np.abs(bf16(a)) @ np.abs(bf16(b)))
    dims = (((1,), (0,)), ((), ()))
    good = np.asarray(mixed_precision_dot(jnp.bfloat16)(jnp.asarray(a), jnp.asarray(b), dims), np.float64)
    assert np.all(np.abs(good - exact) <= bound)
    bad = np.asarray(jax.lax.dot_general(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16), dims,
                                         preferred_element_type=jnp.bfloat16), np.float64)
    assert np.mean(np.abs(bad - exact) > bound) > 0.5


def test_bf16_digits_scores_follow_rounded_logits_and_metrics_stay_float32():
    f32, b16 = digits_task(), digits_task(matmul_precision="bfloat16")
    assert b16.info["score_matmul_precision"] == "bfloat16"
    (x_train, y_train), _ = load_digits_split()
    layout = mlp_layout(MLP(), 64)
    for seed in range(3):
        v = jax.random.normal(jax.random.PRNGKey(seed), (layout.size,)) * 0.05
        logits = numpy_logits(layout.unravel(v), x_train, round_to_bf16=True)
        top2 = np.sort(logits, axis=1)[:, -2:]
        # rows whose top two logits are further apart than any float32 accumulation can move them
        clear = (top2[:, 1] - top2[:, 0]) > 2 * float32_accumulation_bound(layout.unravel(v), x_train).max(axis=1)
        want = (logits.argmax(1) == y_train).astype(np.float32)
        got = np.asarray(b16.score_vector(v))
        np.testing.assert_array_equal(got[clear], want[clear])
        assert clear.mean() > 0.95
        assert f32.metrics(v)["test_accuracy"] == b16.metrics(v)["test_accuracy"]

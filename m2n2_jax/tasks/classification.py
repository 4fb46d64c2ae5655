"""Classification with a Flax MLP on flat parameter vectors: the task behind digits and MNIST.

``classification_task`` turns (train, test) arrays and an MLP into a ``Task``:
per-datapoint correctness as the score, test accuracy as the metric, seeds drawn
N(0, seed_std^2). ``train_classifier`` trains one with optax (full-batch Adam),
as the paper's pre-trained seeds are made.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.errors import ConfigError
from m2n2_jax.tasks.base import Task

SEED_STD = 0.01
MATMUL_PRECISIONS = ("float32", "bfloat16")
LEARNING_RATE = 3e-3
EPOCHS = 10


def mixed_precision_dot(dtype):
    """A ``dot_general`` that rounds both operands to ``dtype`` and accumulates in float32.

    With bfloat16 this is one bf16 pass, what TPUs do by default for float32
    matmuls; on CPUs with AVX512-BF16 it runs about twice as fast as float32.
    """

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dimension_numbers,
                                   preferred_element_type=jnp.float32)

    return dot_general


def check_matmul_precision(matmul_precision: str) -> str:
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"unknown matmul precision {matmul_precision!r}; choose one of: "
                          f"{', '.join(MATMUL_PRECISIONS)}.")
    return matmul_precision


class MLP(nn.Module):
    """Dense(hidden) - ReLU - Dense(classes).

    matmul_precision "bfloat16" rounds the operands of both matmuls to bf16 and
    accumulates in float32; parameters, biases and activations stay float32.
    """

    hidden: int = 256
    classes: int = 10
    matmul_precision: str = "float32"

    @nn.compact
    def __call__(self, x):
        dot = None if self.matmul_precision == "float32" else mixed_precision_dot(jnp.dtype(self.matmul_precision))
        x = nn.relu(nn.Dense(self.hidden, dot_general=dot)(x))
        return nn.Dense(self.classes, dot_general=dot)(x)


def mlp_layout(model: MLP, input_dim: int) -> VectorLayout:
    """Flat layout of an MLP's params: kernel_0, bias_0, kernel_1, bias_1."""
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, input_dim)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    # jax.tree.leaves sorts dict keys: Dense_0/bias, Dense_0/kernel, Dense_1/bias, ...
    return VectorLayout.of(params, order=(1, 0, 3, 2))


def accuracy_count(logits, labels) -> jax.Array:
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def classification_task(name: str, model: MLP, train, test, seed_std: float = SEED_STD,
                        pretrained_seeds=None, info=None, matmul_precision: str = "float32") -> Task:
    """A classification Task: score = per-example correctness of ``model``.

    ``matmul_precision`` applies to the training-set scores the search sees
    (the hot path); test metrics always use float32, so reported accuracies are
    those of the model as a float32 user would run it.
    """
    check_matmul_precision(matmul_precision)
    scoring_model = model.clone(matmul_precision=matmul_precision)
    (x_train, y_train), (x_test, y_test) = train, test
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    layout = mlp_layout(model, x_train.shape[1])

    def score_vector(x):
        logits = scoring_model.apply(layout.unravel(x), x_train)
        return (jnp.argmax(logits, axis=-1) == y_train).astype(jnp.float32)

    def metrics(x):
        logits = model.apply(layout.unravel(x), x_test)
        return {"test_accuracy": accuracy_count(logits, y_test) / y_test.shape[0]}

    def random_seed(key):
        return jax.random.normal(key, (layout.size,)) * seed_std

    return Task(name=name, layout=layout, num_datapoints=int(x_train.shape[0]),
                score_vector=score_vector, metrics=metrics, random_seed=random_seed,
                pretrained_seeds=pretrained_seeds, train_labels=y_train,
                info={"train_size": int(x_train.shape[0]), "test_size": int(x_test.shape[0]),
                      "num_params": layout.size, "score_matmul_precision": matmul_precision, **(info or {})})


def train_classifier(model, layout, x, y, start, *, learning_rate: float = LEARNING_RATE,
                     epochs: int = EPOCHS) -> jax.Array:
    """Flat params after ``epochs`` full-batch Adam steps of cross-entropy from ``start`` [D]."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    opt = optax.adam(learning_rate)

    def loss(v):
        logits = model.apply(layout.unravel(v), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        v, opt_state = carry
        grads = jax.grad(loss)(v)
        updates, opt_state = opt.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state), None

    (v, _), _ = jax.lax.scan(step, (start, opt.init(start)), None, length=epochs)
    return v

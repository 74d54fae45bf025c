"""The linear probe on frozen features: multinomial logistic regression with an L2 penalty,
solved to convergence by L-BFGS inside one jitted `while_loop`, with the penalty chosen by the
accuracy on a held-out minival split (see `subsets`).

Its matmuls run in true float32 on every backend (`precision=HIGHEST`): at the default
precision a GPU multiplies float32 in TF32 and a TPU in one bf16 pass, too coarse for L-BFGS's
1e-6 gradient tolerance, and the solution would depend on the backend."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from selfsup.config import number, sequence
from selfsup.evaluate import Evaluator, Row, at_each_layer, fraction_name, layer_method, row
from selfsup.progress import Progress

if TYPE_CHECKING:
    from selfsup.evaluate.target import Target

# `config.linear`'s rules (`selfsup.config.check_values`).
VALUE_RULES = {"l2_grid": sequence(number(0, 1e4, " (0: no penalty)"), "(1e-4, 1e-2)")}

FULL = jax.lax.Precision.HIGHEST  # True float32 matmuls (module docstring).
# Feature columns whose training std is below this are constant: they are centred, not scaled.
STD_EPSILON = 1e-6


@dataclasses.dataclass(frozen=True)
class LogisticRegressionParams:
    """A fitted probe: logits = x @ W + b; whether L-BFGS met its tolerance, and in how many
    iterations."""

    W: jax.Array  # (D, C)
    b: jax.Array  # (C,)
    converged: bool
    num_iter: int


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Accuracies in [0, 1] of the probe with the chosen `l2` (`l2_sweep`: l2 -> minival
    accuracy); `converged` and `num_iter` describe its fit."""

    train_accuracy: float
    minival_accuracy: float
    test_accuracy: float
    l2: float
    l2_sweep: dict[float, float]
    converged: bool
    num_iter: int


def regularised_cross_entropy(
    params: tuple[jax.Array, jax.Array], x: jax.Array, y: jax.Array, l2: jax.Array
) -> jax.Array:
    """Mean softmax cross-entropy + (l2 / 2) * ||W||^2; the bias is not penalised."""
    W, b = params
    logits = jnp.matmul(x, W, precision=FULL) + b
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return cross_entropy + 0.5 * l2 * jnp.sum(W * W)


# l2, max_iter and tol are traced, so one compilation per (N, D, C) serves a whole l2 sweep.
@functools.partial(jax.jit, static_argnames="num_classes")
def _minimize(x, y, l2, max_iter, tol, *, num_classes: int):
    def objective(params):
        return regularised_cross_entropy(params, x, y, l2)

    solver = optax.lbfgs()  # zoom line search by default
    value_and_grad = optax.value_and_grad_from_state(objective)
    params = (
        jnp.zeros((x.shape[1], num_classes), jnp.float32),
        jnp.zeros(num_classes, jnp.float32),
    )
    initial_grad_norm = optax.tree.norm(jax.grad(objective)(params))
    threshold = tol * jnp.maximum(1.0, initial_grad_norm)

    def step(carry):
        params, state, iteration, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        params = optax.apply_updates(params, updates)
        # The line search stores the gradient at the accepted point: the new params.
        return params, state, iteration + 1, optax.tree.norm(optax.tree.get(state, "grad"))

    def keep_going(carry):
        _, _, iteration, grad_norm = carry
        return (iteration < max_iter) & (grad_norm >= threshold)

    carry = (params, solver.init(params), jnp.int32(0), initial_grad_norm)
    (W, b), _, num_iter, grad_norm = jax.lax.while_loop(keep_going, step, carry)
    return W, b, num_iter, grad_norm < threshold


def fit_logistic_regression(
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    *,
    num_classes: int,
    l2: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> LogisticRegressionParams:
    """Minimises `regularised_cross_entropy` from W = 0, b = 0 with L-BFGS in float32.

    Stops when the gradient norm (over W and b together) falls below
    `tol * max(1, initial gradient norm)`, i.e. relative to the gradient at the start where that
    is larger than 1 and absolute otherwise, or after `max_iter` iterations (`converged` False).
    """
    x, y = _checked_features(x, y, num_classes=num_classes, what="x")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    W, b, num_iter, converged = _minimize(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.int32),
        jnp.float32(l2),
        jnp.int32(max_iter),
        jnp.float32(tol),
        num_classes=num_classes,
    )
    return LogisticRegressionParams(W=W, b=b, converged=bool(converged), num_iter=int(num_iter))


def predict(params: LogisticRegressionParams, x: jax.Array | np.ndarray) -> np.ndarray:
    """Predicted class per row of `x` (N,)."""
    return np.asarray(_predict(params.W, params.b, jnp.asarray(x, jnp.float32)))


@jax.jit
def _predict(W, b, x):
    return jnp.argmax(jnp.matmul(x, W, precision=FULL) + b, axis=-1)


def accuracy(
    params: LogisticRegressionParams, x: jax.Array | np.ndarray, y: jax.Array | np.ndarray
) -> float:
    """Fraction of rows of `x` whose predicted class is `y`."""
    return float(np.mean(predict(params, x) == np.asarray(y)))


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    minival_x: np.ndarray,
    minival_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    l2_grid: Sequence[float],
    what: str = "linear probe",
) -> ProbeResult:
    """Standardises features with the training mean/std, fits one probe per l2 in `l2_grid` on
    the training features, keeps the one with the best minival accuracy (ties go to the larger
    l2) and tests it. The minival examples are never fit on."""
    train_x, train_y = _checked_features(train_x, train_y, num_classes=num_classes, what="train")
    minival_x, minival_y = _checked_features(
        minival_x, minival_y, num_classes=num_classes, what="minival"
    )
    test_x, test_y = _checked_features(test_x, test_y, num_classes=num_classes, what="test")
    for what, x in (("minival", minival_x), ("test", test_x)):
        if train_x.shape[1] != x.shape[1]:
            raise ValueError(
                f"train features have {train_x.shape[1]} dimensions, {what} features {x.shape[1]}"
            )
    l2_values = sorted({float(l2) for l2 in l2_grid})
    if not l2_values:
        raise ValueError("l2_grid is empty: give at least one l2 value")
    if not all(np.isfinite(l2) and l2 >= 0 for l2 in l2_values):
        raise ValueError(f"l2_grid values must be finite and >= 0, got {list(l2_grid)}")

    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std = np.where(std > STD_EPSILON, std, 1.0)
    train_x, minival_x, test_x = (
        ((x - mean) / std).astype(np.float32) for x in (train_x, minival_x, test_x)
    )

    fits, l2_sweep = {}, {}
    progress = Progress(f"{what}, L2 sweep", len(l2_values), unit="fits")
    for l2 in l2_values:
        fits[l2] = fit_logistic_regression(train_x, train_y, num_classes=num_classes, l2=l2)
        l2_sweep[l2] = accuracy(fits[l2], minival_x, minival_y)
        progress.advance(1)
    # max() keeps the first of equal accuracies; walking from the largest l2, ties go to it.
    best_l2 = max(reversed(l2_values), key=l2_sweep.__getitem__)
    params = fits[best_l2]
    return ProbeResult(
        train_accuracy=accuracy(params, train_x, train_y),
        minival_accuracy=l2_sweep[best_l2],
        test_accuracy=accuracy(params, test_x, test_y),
        l2=best_l2,
        l2_sweep=l2_sweep,
        converged=params.converged,
        num_iter=params.num_iter,
    )


def _checked_features(
    x: jax.Array | np.ndarray, y: jax.Array | np.ndarray, *, num_classes: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as NumPy arrays, or a ValueError that names what is wrong with them."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1:
        raise ValueError(
            f"{what} features must be (N, D) and labels (N,), got {x.shape} and {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(f"{what} features have {len(x)} rows but there are {len(y)} labels")
    if len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} features are empty: shape {x.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} labels must be integers, got dtype {y.dtype}")
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        raise ValueError(
            f"{np.count_nonzero(outside)} {what} labels lie outside [0, {num_classes}), "
            f"e.g. {y[outside][0]}"
        )
    non_finite_rows = np.count_nonzero(~np.isfinite(x).all(axis=1))
    if non_finite_rows:
        raise ValueError(
            f"{non_finite_rows} of {len(x)} {what} feature rows contain NaN or inf values"
        )
    return x, y


def rows_at(
    target: Target, config: ml_collections.ConfigDict, name: str, layer: str, features
) -> list[Row]:
    """Its rows of encoder `name` at depth `layer`, from that depth's frozen `features`."""
    train_x, train_y, test_x, test_y = features
    minival = target.splits.minival
    rows = []
    for fraction, indices in target.splits.subsets.items():
        start = time.perf_counter()
        result = linear_probe(
            train_x[indices], train_y[indices], train_x[minival], train_y[minival], test_x, test_y,
            num_classes=target.source.num_classes, l2_grid=list(config.linear.l2_grid),
            what=f"{name} {layer_method('linear', layer)} {fraction_name(fraction)} labels",
        )  # fmt: skip
        rows.append(
            row(
                name,
                layer_method("linear", layer),
                fraction,
                indices,
                layer=layer,
                test_accuracy=result.test_accuracy,
                minival_accuracy=result.minival_accuracy,
                train_accuracy=result.train_accuracy,
                l2=result.l2,
                seconds=time.perf_counter() - start,
            )  # fmt: skip
        )
    return rows


def settings(config: ml_collections.ConfigDict) -> str:
    return f"linear probe L2 chosen per row on minival from {list(config.linear.l2_grid)}"


EVALUATOR = Evaluator(run=at_each_layer(rows_at), settings=settings)

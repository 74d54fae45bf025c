"""The linear probe on frozen features: multinomial logistic regression with an L2 penalty,
solved to convergence by L-BFGS inside one jitted `while_loop`, as SimCLR and Kornblith et al.
2019 ("Do better ImageNet models transfer better?") evaluate: the penalty chosen by the accuracy
on a held-out minival split (see `subsets`) from a grid (theirs: 45 values log-spaced over
[1e-6, 1e5]), then the probe refit with it on train + minival. The sweep walks the grid from
the strongest penalty down, each fit starting from the previous solution (a warm start along the
L2 path), which converges in far fewer iterations than fits from zero.

Its matmuls run in true float32 on every backend (`precision=HIGHEST`): at the default
precision a GPU multiplies float32 in TF32 and a TPU in one bf16 pass, too coarse for L-BFGS's
1e-6 gradient tolerance, and the solution would depend on the backend."""

from __future__ import annotations

import dataclasses
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
VALUE_RULES = {"l2_grid": sequence(number(0, 1e5, " (0: no penalty)"), "(1e-4, 1e-2)")}

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
    """Accuracies in [0, 1] of the probe with the chosen `l2`: `minival_accuracy` that of the
    sweep's fit (`l2_sweep`: l2 -> minival accuracy), `train_accuracy` and `test_accuracy` those
    of the `probe` reported (refit on train + minival where it is; its weights act on features
    standardised with the statistics of the examples it was fit on)."""

    train_accuracy: float
    minival_accuracy: float
    test_accuracy: float
    l2: float
    l2_sweep: dict[float, float]
    probe: LogisticRegressionParams


def regularised_cross_entropy(
    params: tuple[jax.Array, jax.Array], x: jax.Array, y: jax.Array, l2: jax.Array
) -> jax.Array:
    """Mean softmax cross-entropy + (l2 / 2) * ||W||^2; the bias is not penalised."""
    W, b = params
    logits = jnp.matmul(x, W, precision=FULL) + b
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return cross_entropy + 0.5 * l2 * jnp.sum(W * W)


# l2, max_iter and tol are traced, so one compilation per (N, D, C) serves a whole l2 sweep.
@jax.jit
def _minimize(x, y, l2, max_iter, tol, W, b):
    def objective(params):
        return regularised_cross_entropy(params, x, y, l2)

    solver = optax.lbfgs()  # zoom line search by default
    value_and_grad = optax.value_and_grad_from_state(objective)
    # Relative to the gradient at zero wherever the fit starts: a warm start stops where a fit
    # from zero would, not closer to the optimum it already started near.
    zero = (jnp.zeros_like(W), jnp.zeros_like(b))
    threshold = tol * jnp.maximum(1.0, optax.tree.norm(jax.grad(objective)(zero)))

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

    params = (W, b)
    initial_grad_norm = optax.tree.norm(jax.grad(objective)(params))
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
    start: LogisticRegressionParams | None = None,
) -> LogisticRegressionParams:
    """Minimises `regularised_cross_entropy` with L-BFGS in float32, from `start`'s weights (a
    warm start, e.g. the solution at a nearby l2) or from W = 0, b = 0.

    Stops when the gradient norm (over W and b together) falls below
    `tol * max(1, gradient norm at W = 0, b = 0)`, i.e. relative to the gradient at zero where
    that is larger than 1 and absolute otherwise, whatever the start, or after `max_iter`
    iterations (`converged` False).
    """
    x, y = _checked_features(x, y, num_classes=num_classes, what="x")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    if start is None:
        W, b = np.zeros((x.shape[1], num_classes), np.float32), np.zeros(num_classes, np.float32)
    else:
        W, b = start.W, start.b
    W, b, num_iter, converged = _minimize(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.int32),
        jnp.float32(l2),
        jnp.int32(max_iter),
        jnp.float32(tol),
        jnp.asarray(W, jnp.float32),
        jnp.asarray(b, jnp.float32),
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
    refit: bool,
    what: str = "linear probe",
) -> ProbeResult:
    """Fits one probe per l2 in `l2_grid` on the training features (standardised with their
    mean/std), from the largest l2 down, each from the previous solution; keeps the l2 with the
    best minival accuracy (ties go to the larger l2). With `refit`, the probe reported is then
    fit with that l2 on train + minival (standardised with their statistics, from the chosen
    solution); without, it is the sweep's fit, and minival is never fit on."""
    train_x, train_y = _checked_features(train_x, train_y, num_classes=num_classes, what="train")
    minival_x, minival_y = _checked_features(
        minival_x, minival_y, num_classes=num_classes, what="minival"
    )
    test_x, test_y = _checked_features(test_x, test_y, num_classes=num_classes, what="test")
    for what_x, x in (("minival", minival_x), ("test", test_x)):
        if train_x.shape[1] != x.shape[1]:
            raise ValueError(
                f"train features have {train_x.shape[1]} dimensions, {what_x} features {x.shape[1]}"
            )
    l2_values = sorted({float(l2) for l2 in l2_grid}, reverse=True)
    if not l2_values:
        raise ValueError("l2_grid is empty: give at least one l2 value")
    if not all(np.isfinite(l2) and l2 >= 0 for l2 in l2_values):
        raise ValueError(f"l2_grid values must be finite and >= 0, got {list(l2_grid)}")

    progress = Progress(f"{what}, L2 sweep", len(l2_values) + refit, unit="fits")
    fit_x, fit_minival_x, fit_test_x = _standardised(train_x, minival_x, test_x)
    l2_sweep, best_l2, chosen = _l2_path(
        fit_x,
        train_y,
        fit_minival_x,
        minival_y,
        l2_values,
        num_classes=num_classes,
        progress=progress,
    )
    if refit:
        train_y = np.concatenate([train_y, minival_y])
        fit_x, fit_test_x = _standardised(np.concatenate([train_x, minival_x]), test_x)
        chosen = fit_logistic_regression(
            fit_x, train_y, num_classes=num_classes, l2=best_l2, start=chosen
        )
        progress.advance(1)
    return ProbeResult(
        train_accuracy=accuracy(chosen, fit_x, train_y),
        minival_accuracy=l2_sweep[best_l2],
        test_accuracy=accuracy(chosen, fit_test_x, test_y),
        l2=best_l2,
        l2_sweep=dict(sorted(l2_sweep.items())),
        probe=chosen,
    )


def _l2_path(x, y, minival_x, minival_y, l2_values, *, num_classes: int, progress: Progress):
    """({l2: minival accuracy}, the best l2, its fit) of fits along `l2_values` (largest
    first), each from the previous solution; ties go to the larger l2."""
    l2_sweep, fit, best_l2, best = {}, None, None, None
    for l2 in l2_values:
        fit = fit_logistic_regression(x, y, num_classes=num_classes, l2=l2, start=fit)
        l2_sweep[l2] = accuracy(fit, minival_x, minival_y)
        if best_l2 is None or l2_sweep[l2] > l2_sweep[best_l2]:
            best_l2, best = l2, fit
        progress.advance(1)
    return l2_sweep, best_l2, best


def _standardised(fit_x: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """`fit_x` and `others` standardised with `fit_x`'s mean and std, as float32; a column
    whose std is below `STD_EPSILON` is centred, not scaled. This is MAE's linear probe's
    BatchNorm without affine parameters in front of the classifier, with its statistics those
    of the whole training set rather than running averages of batches."""
    mean = fit_x.mean(axis=0, dtype=np.float64)
    std = fit_x.std(axis=0, dtype=np.float64)
    std = np.where(std > STD_EPSILON, std, 1.0)
    return tuple(((x - mean) / std).astype(np.float32) for x in (fit_x, *others))


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
    """Its rows of encoder `name` at depth `layer`, from that depth's frozen `features`: the
    l2 chosen on minival, then at all labels the probe refit on train + minival
    (`LabelSplits.final_labels`; a smaller fraction keeps its own labels only)."""
    train_x, train_y, test_x, test_y = features
    minival = target.splits.minival
    rows = []
    for fraction, indices in target.splits.subsets.items():
        start = time.perf_counter()
        labelled = target.splits.final_labels(fraction)
        result = linear_probe(
            train_x[indices], train_y[indices], train_x[minival], train_y[minival], test_x, test_y,
            num_classes=target.source.num_classes, l2_grid=list(config.linear.l2_grid),
            refit=len(labelled) > len(indices),
            what=f"{name} {layer_method('linear', layer)} {fraction_name(fraction)} labels",
        )  # fmt: skip
        rows.append(
            row(
                name,
                layer_method("linear", layer),
                fraction,
                labelled,
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
    grid = sorted(config.linear.l2_grid)
    return (
        f"linear probe L2 chosen per row on minival from {len(grid)} values in "
        f"[{grid[0]:g}, {grid[-1]:g}], then at 100% labels refit on train + minival"
    )


EVALUATOR = Evaluator(run=at_each_layer(rows_at), settings=settings)

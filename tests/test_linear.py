"""Linear probe: the L-BFGS logistic regression against scikit-learn's on standardised digits
(objective in float64 NumPy, weights, test accuracy), from zero and warm-started along the L2
path, optimality at the solution, limiting cases of the penalty, l2 selection on minival, the
refit on train + minival and input errors, and full float32 precision whatever the backend's
default matmul precision."""

import functools
from types import SimpleNamespace

import jax
import ml_collections
import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from selfsup.evaluate import linear
from selfsup.evaluate.subsets import make_label_splits, stratified_split


@functools.cache
def digits():
    """Standardised (with training statistics) digits: train 1347 x 64, test 450 x 64."""
    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std[std == 0] = 1.0
    return (train_x - mean) / std, train_y, (test_x - mean) / std, test_y


def objective(W, b, x, y, l2) -> float:
    """Mean cross-entropy + (l2 / 2) ||W||^2 in float64."""
    logits = x @ W + b
    return np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), y]) + 0.5 * l2 * np.sum(
        W * W
    )


def gradient(W, b, x, y, l2):
    residual = softmax(x @ W + b, axis=1) - np.eye(W.shape[1])[y]
    return x.T @ residual / len(y) + l2 * W, residual.mean(axis=0)


def as_float64(params):
    return np.asarray(params.W, np.float64), np.asarray(params.b, np.float64)


def blobs(num_per_class=20, num_classes=3, dim=5, spread=0.1, seed=0):
    """Well separated Gaussian blobs around scaled one-hot centres."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), num_per_class)
    x = 5.0 * np.eye(num_classes, dim)[y] + spread * rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def sklearn_fit(x, y, l2):
    # sklearn minimises C * sum(CE) + ||W||^2 / 2, i.e. ours times C * N for C = 1 / (l2 * N).
    return LogisticRegression(C=1 / (l2 * len(y)), max_iter=5000, tol=1e-8).fit(x, y)


def assert_matches_sklearn(params, train_x, train_y, test_x, test_y, l2):
    reference = sklearn_fit(train_x, train_y, l2)
    W, b = as_float64(params)
    ours = objective(W, b, train_x, train_y, l2)
    theirs = objective(reference.coef_.T, reference.intercept_, train_x, train_y, l2)
    assert params.converged
    assert abs(ours - theirs) / theirs < 1e-5
    np.testing.assert_allclose(W, reference.coef_.T, atol=2e-3)
    # Both solutions' biases are defined up to a shared shift; compare them centred.
    np.testing.assert_allclose(
        b - b.mean(), reference.intercept_ - reference.intercept_.mean(), atol=2e-3
    )
    assert abs(linear.accuracy(params, test_x, test_y) - reference.score(test_x, test_y)) <= 0.005


@pytest.mark.parametrize("l2", [1e-3, 1e-2, 1e-1])
def test_matches_sklearn_on_digits(l2):
    train_x, train_y, test_x, test_y = digits()
    params = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=l2)
    assert_matches_sklearn(params, train_x, train_y, test_x, test_y, l2)


@pytest.mark.slow  # Five digits fits and a scikit-learn one.
def test_warm_starts_along_the_l2_path_reach_sklearns_solution_in_fewer_iterations():
    train_x, train_y, test_x, test_y = digits()
    strong = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=1e-1)
    warm = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=1e-2, start=strong)
    assert_matches_sklearn(warm, train_x, train_y, test_x, test_y, 1e-2)
    cold = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=1e-2)
    assert warm.num_iter < cold.num_iter, (warm.num_iter, cold.num_iter)
    # Started at its own solution, a fit stops at once: the tolerance is the cold fit's, relative
    # to the gradient at zero (large here, for features x 30), not to the one at the start.
    # In float32 this badly scaled fit takes 250 to 1,600 iterations, by the order in which the
    # CPU sums (it varies with the machine and the number of XLA devices): room for all of them.
    x = 30 * train_x
    solution = linear.fit_logistic_regression(x, train_y, num_classes=10, l2=1e-1, max_iter=10_000)
    again = linear.fit_logistic_regression(x, train_y, num_classes=10, l2=1e-1, start=solution)
    assert solution.converged and again.converged and again.num_iter <= 1
    np.testing.assert_allclose(again.W, solution.W, atol=1e-5)


def test_gradient_vanishes_and_every_perturbation_is_worse():
    train_x, train_y, _, _ = digits()
    l2 = 1e-2
    params = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=l2)
    W, b = as_float64(params)
    grad_W, grad_b = gradient(W, b, train_x, train_y, l2)
    assert np.sqrt(np.sum(grad_W**2) + np.sum(grad_b**2)) < 1e-5

    best = objective(W, b, train_x, train_y, l2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        dW, db = rng.normal(size=W.shape), rng.normal(size=b.shape)
        scale = 1e-2 / np.sqrt(np.sum(dW**2) + np.sum(db**2))
        assert objective(W + scale * dW, b + scale * db, train_x, train_y, l2) > best


def test_separable_data_is_fit_exactly_with_tiny_l2():
    x, y = blobs()
    params = linear.fit_logistic_regression(x, y, num_classes=3, l2=1e-6)
    assert linear.accuracy(params, x, y) == 1.0
    np.testing.assert_array_equal(linear.predict(params, x), y)


def test_strong_l2_drives_weights_to_zero():
    x, y = blobs()
    norms = [
        float(np.linalg.norm(linear.fit_logistic_regression(x, y, num_classes=3, l2=l2).W))
        for l2 in [1e-2, 1.0, 1e2, 1e4]
    ]
    assert all(a > b for a, b in zip(norms, norms[1:])), norms
    # At the optimum W = -grad(CE) / l2 and ||grad(CE)|| <= sqrt(2) * max ||x_i||.
    assert norms[-1] <= np.sqrt(2) * np.linalg.norm(x, axis=1).max() / 1e4
    assert norms[-1] < 1e-3


def test_max_iter_bounds_the_solver_and_reports_no_convergence():
    train_x, train_y, _, _ = digits()
    params = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=1e-3, max_iter=3)
    assert (params.converged, params.num_iter) == (False, 3)


def test_one_compilation_serves_the_l2_sweep():
    x, y = blobs(num_per_class=7)
    linear.fit_logistic_regression(x, y, num_classes=3, l2=1.0)
    compiled = linear._minimize._cache_size()
    for l2 in [0.0, 1e-3, 1e3]:
        linear.fit_logistic_regression(x, y, num_classes=3, l2=l2)
    assert linear._minimize._cache_size() == compiled


def dot_lines(lowered) -> list[str]:
    """The dot_general ops of a lowered program (StableHLO), each with its precision config."""
    return [line for line in lowered.as_text().splitlines() if "dot_general" in line]


def test_every_matmul_of_the_probe_asks_for_full_float32_under_a_bf16_default():
    # XLA:CPU multiplies float32 in full float32 whatever a dot's precision config says, so on a
    # CPU only the program shows what a GPU (TF32) or TPU (one bf16 pass) would run: each dot of
    # the L-BFGS solve (its objective, gradient and line search) and of predict must say HIGHEST.
    x, y = blobs(num_per_class=7)
    with jax.default_matmul_precision("bfloat16"):
        W, b = np.zeros((5, 3), np.float32), np.zeros(3, np.float32)
        solve = linear._minimize.lower(x, y, np.float32(1e-3), np.int32(10), np.float32(1e-6), W, b)
        predict = linear._predict.lower(np.zeros((5, 3), np.float32), np.zeros(3, np.float32), x)
    for program in (solve, predict):
        dots = dot_lines(program)
        assert dots and all("precision = [HIGHEST, HIGHEST]" in dot for dot in dots), dots


def test_the_probe_under_a_bf16_default_reaches_the_float32_solution():
    # Bites where the default precision changes the arithmetic (GPU, TPU); on a CPU the test
    # above is the one that fails if a matmul follows the default.
    train_x, train_y, test_x, test_y = digits()
    fits = {}
    for precision in ("float32", "bfloat16"):
        with jax.default_matmul_precision(precision):
            fit = linear.fit_logistic_regression(train_x, train_y, num_classes=10, l2=1e-3)
            fits[precision] = fit, linear.accuracy(fit, test_x, test_y)
    (full, full_accuracy), (bf16, bf16_accuracy) = fits["float32"], fits["bfloat16"]
    assert full.converged and bf16.converged and bf16.num_iter == full.num_iter
    np.testing.assert_allclose(bf16.W, full.W, rtol=1e-5, atol=1e-6)
    assert bf16_accuracy == full_accuracy


def test_probe_on_digits_picks_the_argmax_of_the_sweep():
    train_x, train_y, test_x, test_y = digits()
    fit, val = stratified_split(train_y, num_classes=10, val_fraction=0.2, seed=1)
    grid = [1e-4, 1e-2, 1.0, 10.0]
    result = linear.linear_probe(
        train_x[fit], train_y[fit], train_x[val], train_y[val], test_x, test_y,
        num_classes=10, l2_grid=grid, refit=False,
    )  # fmt: skip
    assert sorted(result.l2_sweep) == grid
    best = max(result.l2_sweep.values())
    assert result.l2 == max(l2 for l2, acc in result.l2_sweep.items() if acc == best)
    assert result.minival_accuracy == result.l2_sweep[result.l2]
    # A strong penalty underfits digits; the weak ones should not be beaten by it.
    assert result.l2 < 10.0
    assert result.test_accuracy > 0.93 and result.train_accuracy > result.test_accuracy
    assert result.probe.converged and result.probe.num_iter > 0

    # The probe is the fit on the fit rows alone, standardised with their own statistics, with
    # that l2; each accuracy is its float64 NumPy accuracy on that split (up to one near tie).
    mean, std = train_x[fit].mean(axis=0), train_x[fit].std(axis=0)
    std[std <= linear.STD_EPSILON] = 1.0
    fit_only = linear.fit_logistic_regression(
        ((train_x[fit] - mean) / std).astype(np.float32), train_y[fit], num_classes=10, l2=result.l2
    )
    W, b = as_float64(fit_only)
    for name, x, y in [
        ("train", train_x[fit], train_y[fit]),
        ("minival", train_x[val], train_y[val]),
        ("test", test_x, test_y),
    ]:
        expected = np.mean(np.argmax((x - mean) / std @ W + b, axis=1) == y)
        assert isinstance(getattr(result, f"{name}_accuracy"), float)
        assert abs(getattr(result, f"{name}_accuracy") - expected) <= 1 / len(y), name


@pytest.mark.slow  # Four digits fits and a scikit-learn one.
def test_the_chosen_l2_is_refit_on_train_and_minival_as_sklearn_fits_them():
    train_x, train_y, test_x, test_y = digits()
    fit, val = stratified_split(train_y, num_classes=10, val_fraction=0.2, seed=1)
    grid = [1e-2, 1.0, 10.0]
    result = linear.linear_probe(
        train_x[fit], train_y[fit], train_x[val], train_y[val], test_x, test_y,
        num_classes=10, l2_grid=grid, refit=True,
    )  # fmt: skip
    assert sorted(result.l2_sweep) == grid and result.l2 < 10.0
    assert result.minival_accuracy == result.l2_sweep[result.l2] == max(result.l2_sweep.values())
    # The probe reported: sklearn's fit with that l2 on train + minival, standardised with
    # their own statistics.
    both = np.concatenate([fit, val])
    mean, std = train_x[both].mean(axis=0), train_x[both].std(axis=0)
    std[std <= linear.STD_EPSILON] = 1.0
    x, y = (train_x[both] - mean) / std, train_y[both]
    assert result.probe.converged
    assert_matches_sklearn(result.probe, x, y, (test_x - mean) / std, test_y, result.l2)
    W, b = as_float64(result.probe)
    assert result.train_accuracy == np.mean(np.argmax(x @ W + b, axis=1) == y)
    assert result.test_accuracy == np.mean(
        np.argmax((test_x - mean) / std @ W + b, axis=1) == test_y
    )


@pytest.mark.slow  # Compiles the solver for three more sizes.
def test_rows_at_all_labels_are_the_probe_refit_on_the_whole_training_split():
    x, y = blobs(num_per_class=20, spread=2.0, seed=1)
    test_x, test_y = blobs(num_per_class=20, spread=2.0, seed=2)
    splits = make_label_splits(y, [0.5, 1.0], num_classes=3, minival_fraction=0.2, seed=0)
    target = SimpleNamespace(splits=splits, source=SimpleNamespace(num_classes=3))
    config = ml_collections.ConfigDict(dict(linear=dict(l2_grid=(1e-2, 1.0))))
    rows = linear.rows_at(target, config, "pretrained", "stage4", (x, y, test_x, test_y))
    minival = splits.minival
    for row, fraction in zip(rows, (0.5, 1.0)):
        subset = splits.subsets[fraction]
        expected = linear.linear_probe(
            x[subset], y[subset], x[minival], y[minival], test_x, test_y,
            num_classes=3, l2_grid=[1e-2, 1.0], refit=fraction == 1,
        )  # fmt: skip
        # 60 examples: minival 12, the pool 48, half of it 24; all labels: the 60.
        assert row["num_labels"] == {0.5: 24, 1.0: 60}[fraction]
        assert (row["test_accuracy"], row["l2"]) == (expected.test_accuracy, expected.l2)
        assert row["train_accuracy"] == expected.train_accuracy


def test_ties_go_to_the_larger_l2():
    x, y = blobs(num_per_class=20)
    result = linear.linear_probe(
        x, y, x, y, x, y, num_classes=3, l2_grid=[1e-1, 1e-3, 1e-2], refit=False
    )
    assert result.l2_sweep == {1e-3: 1.0, 1e-2: 1.0, 1e-1: 1.0}
    assert result.l2 == 1e-1


def test_probe_is_invariant_to_per_feature_affine_scaling_and_constant_features():
    x, y = blobs(num_per_class=20, spread=2.0, seed=1)
    test_x, test_y = blobs(num_per_class=20, spread=2.0, seed=2)
    x[:, -1] = test_x[:, -1] = 0.0
    scale = np.array([1e-3, 1.0, 50.0, 1e3, 0.0], np.float32)
    shift = np.array([5.0, -2.0, 0.0, 1e2, 4.0], np.float32)
    kwargs = dict(num_classes=3, l2_grid=[1e-2, 1.0], refit=False)
    plain = linear.linear_probe(x, y, test_x, test_y, test_x, test_y, **kwargs)
    # The constant last column (0 or 4) must neither matter nor produce NaNs.
    test_x = test_x * scale + shift
    scaled = linear.linear_probe(x * scale + shift, y, test_x, test_y, test_x, test_y, **kwargs)
    assert plain.test_accuracy < 1.0  # overlapping blobs: the comparison is not trivial
    assert scaled.l2_sweep == plain.l2_sweep
    assert (scaled.test_accuracy, scaled.l2) == (plain.test_accuracy, plain.l2)


def probe(train_x, train_y, test_x=None, test_y=None, **overrides):
    """The probe with the training set as minival, and as test set unless one is given."""
    kwargs = dict(num_classes=3, l2_grid=[1e-2], refit=False)
    kwargs.update(overrides)
    test_x = train_x if test_x is None else test_x
    test_y = train_y if test_y is None else test_y
    return linear.linear_probe(train_x, train_y, train_x, train_y, test_x, test_y, **kwargs)


def test_errors_name_the_problem():
    x, y = blobs(num_per_class=5)
    with pytest.raises(ValueError, match="train features have 15 rows but there are 14 labels"):
        probe(x, y[:-1])
    with pytest.raises(ValueError, match="test features have 3 rows but there are 15 labels"):
        probe(x, y, test_x=x[:3])
    with pytest.raises(ValueError, match="train features have 5 dimensions, test features 2"):
        probe(x, y, test_x=x[:, :2])
    with pytest.raises(ValueError, match="train features are empty"):
        probe(x[:0], y[:0])
    with pytest.raises(ValueError, match="x features are empty"):
        linear.fit_logistic_regression(x[:, :0], y, num_classes=3, l2=1.0)
    with pytest.raises(ValueError, match="l2_grid is empty"):
        probe(x, y, l2_grid=[])


def test_labels_outside_the_classes_are_rejected():
    x, y = blobs(num_per_class=5)
    bad = y.copy()
    bad[[0, 4]] = [3, -1]
    with pytest.raises(ValueError, match=r"2 train labels lie outside \[0, 3\)"):
        probe(x, bad)
    bad = y.copy()
    bad[-1] = 7
    with pytest.raises(ValueError, match=r"1 test labels lie outside \[0, 3\), e.g. 7"):
        probe(x, y, test_y=bad)


def test_non_finite_features_are_counted_by_row():
    x, y = blobs(num_per_class=5)
    bad = x.copy()
    bad[[1, 3], 0] = np.nan
    bad[3, 2] = np.inf  # a second bad value in row 3: still one row
    bad[7, 1] = -np.inf
    with pytest.raises(ValueError, match="3 of 15 train feature rows contain NaN or inf"):
        probe(bad, y)
    with pytest.raises(ValueError, match="3 of 15 test feature rows contain NaN or inf"):
        probe(x, y, test_x=bad)

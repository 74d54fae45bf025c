"""Weighted kNN against a brute-force NumPy implementation; its bank at all labels the whole
training split (DINO's); its similarities in full float32 whatever the backend's default matmul
precision."""

from types import SimpleNamespace

import jax
import ml_collections
import numpy as np
import pytest

from selfsup.evaluate import knn
from selfsup.evaluate.knn import knn_accuracy, knn_predict
from selfsup.evaluate.subsets import make_label_splits


def knn_reference(train_x, train_y, test_x, *, num_classes, k, temperature):
    """Loops over test rows in float64: cosine similarity, k best, exp(s/T)-weighted votes."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    predictions = []
    for row in test_x.astype(np.float64):
        similarity = train @ (row / np.linalg.norm(row))
        nearest = np.argsort(-similarity, kind="stable")[:k]
        scores = np.zeros(num_classes)
        for j in nearest:
            scores[train_y[j]] += np.exp(similarity[j] / temperature)
        predictions.append(np.argmax(scores))
    return np.array(predictions)


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (20, 0.5), (60, 1.0)])
def test_knn_equals_brute_force(k, temperature):
    rng = np.random.default_rng(k)
    centers = rng.normal(size=(4, 16))
    train_y, test_y = rng.integers(0, 4, 60), rng.integers(0, 4, 37)
    train_x = centers[train_y] + rng.normal(scale=1.5, size=(60, 16))
    test_x = centers[test_y] + rng.normal(scale=1.5, size=(37, 16))
    expected = knn_reference(train_x, train_y, test_x, num_classes=4, k=k, temperature=temperature)
    got = knn_predict(
        train_x, train_y, test_x, num_classes=4, k=k, temperature=temperature, chunk_size=16
    )  # Several chunks, the last one partial.
    np.testing.assert_array_equal(got, expected)
    assert knn_accuracy(
        train_x, train_y, test_x, test_y, num_classes=4, k=k, temperature=temperature
    ) == np.mean(expected == test_y)


def test_knn_is_scale_invariant_and_k1_recovers_training_labels():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)), rng.integers(0, 3, 30)
    np.testing.assert_array_equal(knn_predict(x, y, 5 * x, num_classes=3, k=1, temperature=0.1), y)


@pytest.mark.parametrize(
    "k, temperature, message", [(0, 0.1, "0 < k"), (11, 0.1, "k=11"), (3, 0.0, "temperature")]
)
def test_knn_rejects_bad_settings(k, temperature, message):
    x = np.ones((10, 4))
    with pytest.raises(ValueError, match=message):
        knn_predict(x, np.zeros(10, int), x, num_classes=2, k=k, temperature=temperature)


def test_the_similarity_matmul_asks_for_full_float32_under_a_bf16_default():
    # XLA:CPU ignores a dot's precision config, so the program is what shows a GPU's or TPU's.
    x = np.ones((6, 4), np.float32)
    with jax.default_matmul_precision("bfloat16"):
        lowered = knn._class_scores.lower(
            x, np.zeros(6, np.int32), x, np.float32(0.1), num_classes=2, k=3
        )
    dots = [line for line in lowered.as_text().splitlines() if "dot_general" in line]
    assert dots and all("precision = [HIGHEST, HIGHEST]" in dot for dot in dots), dots


def test_the_bank_at_all_labels_is_the_whole_training_split_minival_included():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 16))
    train_y, test_y = np.repeat(np.arange(4), 15), rng.integers(0, 4, 37)
    train_x = centers[train_y] + rng.normal(scale=1.5, size=(60, 16))
    test_x = centers[test_y] + rng.normal(scale=1.5, size=(37, 16))
    splits = make_label_splits(train_y, [1.0], num_classes=4, minival_fraction=0.2, seed=0)
    target = SimpleNamespace(splits=splits, source=SimpleNamespace(num_classes=4))
    config = ml_collections.ConfigDict(dict(knn=dict(ks=(5,), temperature=0.1)))
    (row,) = knn.rows_at(target, config, "pretrained", "stage4", (train_x, train_y, test_x, test_y))
    assert row["num_labels"] == 60 and row["k"] == 5
    kwargs = dict(num_classes=4, k=5, temperature=0.1)
    votes = knn_reference(train_x, train_y, test_x, **kwargs)
    assert row["test_accuracy"] == np.mean(votes == test_y)
    # Minival's own accuracy is that of the bank without it (else each would find itself).
    pool, minival = splits.subsets[1.0], splits.minival
    votes = knn_reference(train_x[pool], train_y[pool], train_x[minival], **kwargs)
    assert row["minival_accuracy"] == np.mean(votes == train_y[minival])

"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018; DINO's
`eval_knn`): cosine similarity to every training feature, the k most similar vote for their
labels with weight exp(similarity / T), the class with the largest total wins."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _class_scores(train_x, train_y, test_x, temperature, *, num_classes: int, k: int):
    similarity = jnp.matmul(
        _normalize(test_x), _normalize(train_x).T, precision=jax.lax.Precision.HIGHEST
    )
    top_similarity, top_index = jax.lax.top_k(similarity, k)
    votes = (
        jax.nn.one_hot(train_y[top_index], num_classes)
        * jnp.exp(top_similarity / temperature)[..., None]
    )
    return votes.sum(axis=1)


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    num_classes: int,
    k: int,
    temperature: float,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Predicted labels for `test_x`; test rows go in chunks to bound the similarity matrix."""
    if not 0 < k <= len(train_x):
        raise ValueError(f"kNN needs 0 < k <= {len(train_x)} training examples, got k={k}.")
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be positive, got {temperature}.")
    train_x, train_y = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32)
    predictions = []
    for start in range(0, len(test_x), chunk_size):
        chunk = jnp.asarray(test_x[start : start + chunk_size], jnp.float32)
        scores = _class_scores(
            train_x, train_y, chunk, jnp.float32(temperature), num_classes=num_classes, k=k
        )
        predictions.append(np.asarray(jnp.argmax(scores, axis=-1)))
    return np.concatenate(predictions)


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    k: int,
    temperature: float,
) -> float:
    predictions = knn_predict(
        train_x, train_y, test_x, num_classes=num_classes, k=k, temperature=temperature
    )
    return float(np.mean(predictions == np.asarray(test_y)))

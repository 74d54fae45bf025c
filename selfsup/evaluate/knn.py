"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018; DINO's
`eval_knn`): cosine similarity to every training feature, the k most similar vote for their
labels with weight exp(similarity / T), the class with the largest total wins. As in DINO,
InstDisc and solo-learn, k and T are fixed and the bank at all labels is the whole training
split, minival included: nothing is chosen on minival."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from selfsup.config import integer, number, sequence
from selfsup.evaluate import Evaluator, Row, at_each_layer, fraction_name, layer_method, row
from selfsup.progress import Progress

if TYPE_CHECKING:
    from selfsup.evaluate.target import Target

# `config.knn`'s rules (`selfsup.config.check_values`).
VALUE_RULES = {
    "ks": sequence(integer(1, why=" (capped at the number of labels)"), "(20, 200)"),
    # A vote weighs exp(similarity / T): at T < 0.0114 that passes float32's largest number.
    "temperature": number(0.02, 10, " (DINO: 0.07)"),
}


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
    what: str = "k-NN",
) -> np.ndarray:
    """Predicted labels for `test_x`; test rows go in chunks to bound the similarity matrix."""
    if not 0 < k <= len(train_x):
        raise ValueError(f"kNN needs 0 < k <= {len(train_x)} training examples, got k={k}.")
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be positive, got {temperature}.")
    train_x, train_y = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32)
    predictions = []
    progress = Progress(what, len(test_x))
    for start in range(0, len(test_x), chunk_size):
        chunk = jnp.asarray(test_x[start : start + chunk_size], jnp.float32)
        scores = _class_scores(
            train_x, train_y, chunk, jnp.float32(temperature), num_classes=num_classes, k=k
        )
        predictions.append(np.asarray(jnp.argmax(scores, axis=-1)))
        progress.advance(len(chunk))
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
    what: str = "k-NN",
) -> float:
    predictions = knn_predict(
        train_x, train_y, test_x, num_classes=num_classes, k=k, temperature=temperature, what=what
    )
    return float(np.mean(predictions == np.asarray(test_y)))


def rows_at(
    target: Target, config: ml_collections.ConfigDict, name: str, layer: str, features
) -> list[Row]:
    """Its rows of encoder `name` at depth `layer`, from that depth's frozen `features`. The
    bank is the row's labels (`LabelSplits.final_labels`: at all labels the whole training
    split); minival accuracy, reported but never used, is that of the bank without minival."""
    train_x, train_y, test_x, test_y = features
    minival = target.splits.minival
    rows = []
    for fraction in target.splits.subsets:
        bank = target.splits.final_labels(fraction)
        held_out = np.setdiff1d(bank, minival)
        bank_xy, held_out_xy = (
            (train_x[bank], train_y[bank]),
            (train_x[held_out], train_y[held_out]),
        )
        for k in config.knn.ks:
            start = time.perf_counter()
            # Fewer labelled examples than k: every one of them votes.
            used_k = min(k, len(bank))
            kwargs = dict(num_classes=target.source.num_classes, temperature=config.knn.temperature)
            what = f"{name} {layer_method(f'knn/k{k}', layer)} {fraction_name(fraction)} labels"
            rows.append(
                row(
                    name,
                    layer_method(f"knn/k{k}", layer),
                    fraction,
                    bank,
                    layer=layer,
                    test_accuracy=knn_accuracy(
                        *bank_xy, test_x, test_y, k=used_k, **kwargs, what=what
                    ),
                    minival_accuracy=knn_accuracy(
                        *held_out_xy,
                        train_x[minival],
                        train_y[minival],
                        k=min(used_k, len(held_out)),
                        **kwargs,
                    ),
                    k=used_k,
                    temperature=config.knn.temperature,
                    seconds=time.perf_counter() - start,
                )  # fmt: skip
            )
    return rows


def settings(config: ml_collections.ConfigDict) -> str:
    return (
        "k-NN with cosine similarity, votes weighted by exp(s / "
        f"{config.knn.temperature:g}), k fixed in the config (capped at the number of labels); "
        "at 100% labels the bank is the whole training split, minival included"
    )


EVALUATOR = Evaluator(run=at_each_layer(rows_at), settings=settings)

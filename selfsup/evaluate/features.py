"""Frozen-feature extraction: the encoder in inference mode over sharded, padded, masked eval
batches, gathered to the host with padding rows removed (no example dropped or doubled).
Examples that are several patches ([P, h, w, C] each) get the mean of their patches' features,
as Revisiting-SSL evaluates patch-based models (`combine_patches=avg_pool`)."""

from __future__ import annotations

import jax
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.experimental import multihost_utils

from selfsup.data import pipeline


def extract_features(
    encoder: nnx.Module, ds: tf.data.Dataset, mesh: jax.sharding.Mesh, *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float32, labels [N]) for every real example of an `eval_dataset`."""
    graphdef, state = nnx.split(encoder)

    @jax.jit
    def forward(state, images):
        encoder = nnx.merge(graphdef, state)
        if images.ndim == 4:
            return encoder(images, train=False)
        n, p = images.shape[:2]
        features = encoder(images.reshape((n * p, *images.shape[2:])), train=False)
        return features.reshape((n, p, -1)).mean(axis=1)

    features, labels = [], []
    for batch in pipeline.global_batches(ds, mesh, what=what):
        out = {
            "features": forward(state, batch["image"]),
            "label": batch["label"],
            "mask": batch["mask"],
        }
        out = multihost_utils.process_allgather(out, tiled=True)
        features.append(out["features"][out["mask"]])
        labels.append(out["label"][out["mask"]])
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)

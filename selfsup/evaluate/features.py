"""Frozen-feature extraction: the encoder in inference mode over sharded, padded, masked eval
batches, gathered to the host with padding rows removed (no example dropped or doubled)."""

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
        return nnx.merge(graphdef, state)(images, train=False)

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

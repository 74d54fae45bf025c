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
from selfsup.report import Progress


def extract_features(
    encoder: nnx.Module, ds: tf.data.Dataset, mesh: jax.sharding.Mesh, *, what: str, total: int
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float32, labels [N]) for every real example of an `eval_dataset` of
    `total` examples, with a progress line while it takes long."""
    graphdef, state = nnx.split(encoder)

    @jax.jit
    def forward(state, images):
        encoder = nnx.merge(graphdef, state)
        if images.ndim == 4:
            return encoder(images, train=False)
        n, p = images.shape[:2]
        features = encoder(images.reshape((n * p, *images.shape[2:])), train=False)
        return features.reshape((n, p, -1)).mean(axis=1)

    outputs = []
    progress = Progress(f"features of {what}", total)
    for batch in pipeline.global_batches(ds, mesh, what=what):
        outputs.append((forward(state, batch["image"]), batch["label"], batch["mask"]))
        progress.advance(batch["mask"].shape[0])
    # One gather at the end, so the host never waits on a batch: it keeps feeding the devices.
    gathered = multihost_utils.process_allgather(outputs, tiled=True)
    features, labels, masks = (np.concatenate(a) for a in zip(*gathered))
    return features[masks].astype(np.float32), labels[masks]

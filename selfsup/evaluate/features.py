"""Frozen-feature extraction: the encoder in inference mode over sharded, padded, masked eval
batches, gathered to the host with padding rows removed (no example dropped or doubled).
Examples that are several patches ([P, h, w, C] each) get the mean of their patches' features,
as Revisiting-SSL evaluates patch-based models (`combine_patches=avg_pool`).

Features come from any depth of the encoder: `stage1`..`stage4` are the global-average-pooled
outputs of its stages (Revisiting-SSL probes every depth, since which one represents best
differs by task and architecture); `stage4` is the encoder's own output, the pre-logits. Every
depth asked for comes out of one forward pass over the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.experimental import multihost_utils

from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.evaluate import PRE_LOGITS
from selfsup.progress import Progress

LAYERS = ("stage1", "stage2", "stage3", "stage4")
ALL_STAGES = "all_stages"


def resolve_layers(layers: tuple[str, ...]) -> tuple[str, ...]:
    """`config.layers` as depths in `LAYERS`, shallow to deep (`all_stages`: every stage); a
    ConfigError names what is wrong."""
    unknown = [name for name in layers if name not in (*LAYERS, ALL_STAGES)]
    if unknown or not layers:
        raise ConfigError(
            f"config.layers={tuple(layers)!r}: use depths from {list(LAYERS)} (stage4 is the "
            f"pre-logits) or '{ALL_STAGES}', e.g. --config.layers=all_stages."
        )
    return LAYERS if ALL_STAGES in layers else tuple(n for n in LAYERS if n in layers)


def pooled_layers(encoder: nnx.Module, images: jax.Array, layers: tuple[str, ...]) -> dict:
    """{layer: [N, C] float32}: each stage's output map averaged over its positions, computed
    as the encoder pools its last stage (so `stage4` is `encoder(images)` exactly)."""
    maps = encoder.features(images, train=False)
    return {name: jnp.mean(maps[name], axis=(1, 2), dtype=jnp.float32) for name in layers}


def extract_features(
    encoder: nnx.Module,
    ds: tf.data.Dataset,
    mesh: jax.sharding.Mesh,
    *,
    what: str,
    total: int,
    layers: tuple[str, ...] = (PRE_LOGITS,),
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({layer: features [N, D] float32}, labels [N]) for every real example of an
    `eval_dataset` of `total` examples, all layers from one pass, with a progress line while it
    takes long."""
    graphdef, state = nnx.split(encoder)

    @jax.jit
    def forward(state, images):
        encoder = nnx.merge(graphdef, state)
        if images.ndim == 4:
            return pooled_layers(encoder, images, layers)
        n, p = images.shape[:2]
        features = pooled_layers(encoder, images.reshape((n * p, *images.shape[2:])), layers)
        return {k: v.reshape((n, p, -1)).mean(axis=1) for k, v in features.items()}

    outputs = []
    progress = Progress(f"features of {what}", total)
    for batch in pipeline.global_batches(ds, mesh, what=what):
        outputs.append((forward(state, batch["image"]), batch["label"], batch["mask"]))
        progress.advance(batch["mask"].shape[0])
    # One gather at the end, so the host never waits on a batch: it keeps feeding the devices.
    features, labels, masks = zip(*multihost_utils.process_allgather(outputs, tiled=True))
    masks = np.concatenate(masks)
    stacked = {
        k: np.concatenate([f[k] for f in features])[masks].astype(np.float32) for k in layers
    }
    return stacked, np.concatenate(labels)[masks]

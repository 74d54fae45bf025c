"""Frozen-feature extraction: the encoder in inference mode over sharded, padded, masked eval
batches, gathered to the host with padding rows removed (no example dropped or doubled). At
most `MAX_IN_FLIGHT` batches are on their way at once: the devices stay busy while the host
feeds the next, and memory holds the pooled features of the data, not its batches (nor the
heap's holes they leave, given back after each batch).
Examples that are several patches ([P, h, w, C] each) get the mean of their patches' features,
as Revisiting-SSL evaluates patch-based models (`combine_patches=avg_pool`).

Features come from any depth of the encoder: `stage1`..`stage4` are the global-average-pooled
outputs of its stages (Revisiting-SSL probes every depth, since which one represents best
differs by task and architecture); `stage4` is the encoder's own output, the pre-logits. Every
depth asked for comes out of one forward pass over the data.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.experimental import multihost_utils

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.evaluate import PRE_LOGITS
from selfsup.progress import Progress

LAYERS = ("stage1", "stage2", "stage3", "stage4")
# Batches dispatched but not yet gathered to the host: enough to keep the devices busy; a host
# running ahead without limit holds every batch's inputs and outputs until the end.
MAX_IN_FLIGHT = 2
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

    gathered = Gathered(total, layers)
    in_flight = collections.deque()
    progress = Progress(f"features of {what}", total)
    for batch in pipeline.global_batches(ds, mesh, what=what):
        in_flight.append((forward(state, batch["image"]), batch["label"], batch["mask"]))
        if len(in_flight) > MAX_IN_FLIGHT:
            gathered.add(*in_flight.popleft())
            parallel.return_freed_host_memory()
        progress.advance(batch["mask"].shape[0])
    while in_flight:
        gathered.add(*in_flight.popleft())
    return gathered.result()


class Gathered:
    """The real rows of every batch's features and labels, on the host, in order, written into
    arrays of the announced `total` rows: the host holds each feature once, never a list of
    batches and its concatenation."""

    def __init__(self, total: int, layers: tuple[str, ...]):
        self.total, self.layers, self.count = total, layers, 0
        self.features: dict[str, np.ndarray] = {}
        self.labels = np.zeros(0, np.int32)

    def add(self, features: dict[str, jax.Array], labels: jax.Array, mask: jax.Array) -> None:
        # A collective in a multi-process run: every process gathers the same batches.
        features, labels, mask = multihost_utils.process_allgather(
            (features, labels, mask), tiled=True
        )
        mask = np.asarray(mask, bool)
        end = self.count + int(mask.sum())
        if end > self.total:
            raise RuntimeError(f"more than the {self.total} examples announced reached features")
        if not self.features:
            self.labels = np.zeros(self.total, np.asarray(labels).dtype)
            self.features = {
                k: np.zeros((self.total, features[k].shape[-1]), np.float32) for k in self.layers
            }
        for k in self.layers:
            self.features[k][self.count : end] = np.asarray(features[k])[mask]
        self.labels[self.count : end] = np.asarray(labels)[mask]
        self.count = end

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        n = self.count
        return {k: v[:n] for k, v in self.features.items()}, self.labels[:n]

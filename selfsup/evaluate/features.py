"""Frozen-feature extraction: the encoder in inference mode over sharded, padded, masked eval
batches, gathered to the host with padding rows removed (no example dropped or doubled). At
most `MAX_IN_FLIGHT` batches are on their way at once: the devices stay busy while the host
feeds the next, and memory holds the pooled features of the data, not its batches (nor the
heap's holes they leave, given back after each batch).
Examples that are several patches ([P, h, w, C] each) get the mean of their patches' features,
as Revisiting-SSL evaluates patch-based models (`combine_patches=avg_pool`).

Features come from any depth of the encoder (Revisiting-SSL probes every depth, since which one
represents best differs by task and architecture): a ResNet's `stage1`..`stage3` are the output
maps of those stages, max-pooled as Revisiting-SSL's linear evaluation pools them
(`revisiting_pool`) to about `TARGET_FEATURES` values each and flattened; a ViT's `block1`..
`block11` the class token of each block's output after the final norm (DINO's
`get_intermediate_layers`), `patch_mean` the mean of its last block's patch tokens, and
DINO's linear-probe features `cls_last4` (the last 4 blocks' class tokens) and `cls_patch_mean`;
`pre_logits` is the encoder's own output (Revisiting's `pre_logits` tap): a ResNet's last map
averaged over positions, a ViT's class token. Every depth asked for comes out of one forward
pass over the data.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.experimental import multihost_utils

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.evaluate import PRE_LOGITS
from selfsup.models.encoders import probe_layers
from selfsup.progress import Progress

# Batches dispatched but not yet gathered to the host: enough to keep the devices busy; a host
# running ahead without limit holds every batch's inputs and outputs until the end.
MAX_IN_FLIGHT = 2
ALL_STAGES = "all_stages"
# Revisiting-SSL's linear evaluation (linear_eval.py) pools each tap to about this many values.
TARGET_FEATURES = 9000


def resolve_layers(layers: tuple[str, ...], model: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`config.layers` as the features of the encoder `model` describes, shallow to deep
    (`all_stages`: every depth, ending at `pre_logits`); a ConfigError names what is wrong."""
    depths, others = probe_layers(model)
    names = (*depths, *others)
    unknown = [name for name in layers if name not in (*names, ALL_STAGES)]
    if unknown or not layers:
        raise ConfigError(
            f"config.layers={tuple(layers)!r}: use features of this encoder from {list(names)} "
            f"({PRE_LOGITS}: its output) or '{ALL_STAGES}', e.g. --config.layers=all_stages."
        )
    chosen = set(layers) | (set(depths) if ALL_STAGES in layers else set())
    return tuple(name for name in names if name in chosen)


def pooled_layers(encoder: nnx.Module, images: jax.Array, layers: tuple[str, ...]) -> dict:
    """{layer: [N, D] float32}: `pre_logits` the encoder's output (`encoder(images)` exactly),
    a feature vector as the encoder gives it, a feature map `revisiting_pool`ed and flattened
    in (row, column, channel) order."""
    maps = encoder.features(images, train=False)
    maps[PRE_LOGITS] = maps["pooled"]
    return {
        name: maps[name].astype(jnp.float32).reshape((images.shape[0], -1))
        if maps[name].ndim == 2
        else revisiting_pool(maps[name].astype(jnp.float32)).reshape((images.shape[0], -1))
        for name in layers
    }


def pooled_grid(height: int, width: int, channels: int) -> tuple[int, int]:
    """The (rows, columns) that Revisiting-SSL's `utils.adaptive_pool` (mode adaptive_max)
    leaves of a height x width x channels map: all of them if the map holds at most
    `TARGET_FEATURES` values; else the side s >= 1, floor or ceil of sqrt(TARGET / channels),
    whose s * s * channels is nearer TARGET, as fractional max-pooling at stride
    height / s - 1e-5 (at least 1) makes it."""
    if height * width * channels <= TARGET_FEATURES:
        return height, width
    side = math.sqrt(TARGET_FEATURES / channels)
    low, high = math.floor(side), math.ceil(side)
    nearer_low = abs(TARGET_FEATURES - channels * low**2) < abs(
        TARGET_FEATURES - channels * high**2
    )
    side = max(low if nearer_low else high, 1)
    stride = min(max(height / side - 1e-5, 1.0), height)
    return math.floor(height / stride), math.floor(width / stride)


def cell_edges(size: int, cells: int) -> np.ndarray:
    """`cells` + 1 edges cutting `size` positions into cells of floor(size / cells) or
    ceil(size / cells): cell i is [floor(i * size / cells), floor((i + 1) * size / cells))."""
    return np.arange(cells + 1) * size // cells


def max_pool_cells(x: jax.Array, row_edges: Sequence[int], col_edges: Sequence[int]) -> jax.Array:
    """[N, H, W, C] -> [N, rows, columns, C]: the maximum over each cell between consecutive
    edges (a pooling sequence of tf.nn.fractional_max_pool, non-overlapping)."""
    rows = [x[:, a:b].max(axis=1) for a, b in zip(row_edges[:-1], row_edges[1:])]
    x = jnp.stack(rows, axis=1)
    cols = [x[:, :, a:b].max(axis=2) for a, b in zip(col_edges[:-1], col_edges[1:])]
    return jnp.stack(cols, axis=2)


def revisiting_pool(x: jax.Array) -> jax.Array:
    """[N, H, W, C] max-pooled to `pooled_grid`'s cells, as Revisiting-SSL pools each tap for
    its linear evaluation. Its fractional max-pooling draws the cells' order of sizes at random
    per batch; here they are the evenly spread `cell_edges`, one of those draws, fixed, so that
    features are a deterministic function of the image."""
    _, height, width, channels = x.shape
    rows, cols = pooled_grid(height, width, channels)
    if (rows, cols) == (height, width):
        return x
    return max_pool_cells(x, cell_edges(height, rows), cell_edges(width, cols))


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

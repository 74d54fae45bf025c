"""Relative patch position (Doersch, Gupta, Efros 2015): which of the 8 neighbouring cells of a 3x3
grid does a patch come from, given the centre patch?

Follows the ResNet recipe of Kolesnikov, Zhai, Beyer 2019 (google/revisiting-self-supervised,
`patch_model_preprocess.py`, `patch_utils.py`, `preprocess.py`): resize the image to a square,
turn it grey (mean of RGB) with some probability, take a random square crop, split it into a
3x3 grid of cells and take a random `patch_size` crop inside each cell (the jitter), then
standardise every patch on its own (`tf.image.per_image_standardization`, so low-level
statistics do not give the position away). A shared encoder embeds the 9 patches; all 8 pairs
(neighbour, centre) of an image are classified, the label being the neighbour's position
(0-7 = grid positions 0, 1, 2, 3, 5, 6, 7, 8 in row-major order), with the two embeddings
concatenated in that order as in Revisiting's `generate_patch_locations`.

Patches never overlap: each stays inside its own cell, and `min_gap` > 0 keeps neighbouring
patches at least that many pixels apart (Doersch used a gap; Revisiting relies on the jitter
alone, `min_gap=0`). Doersch's remedies for chromatic aberration are options: `color_drop`
keeps one random colour channel per patch and replaces the other two with Gaussian noise of
1/100 of its standard deviation; `project` removes the green-magenta component of every pixel
(x - (x.a)a with a = (-1, 2, -1)/sqrt(6)), in training and evaluation alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from flax import nnx

from selfsup.config import ConfigError
from selfsup.data import augment
from selfsup.models.heads import PatchPairHead, online_probe_head
from selfsup.models.resnet import encoder_from_config

GRID = 3
CENTRE = GRID * GRID // 2
NEIGHBOURS = tuple(i for i in range(GRID * GRID) if i != CENTRE)  # Label i = NEIGHBOURS[i].
CHROMATIC_REMEDIES = ("none", "color_drop", "project")
GREEN_MAGENTA = np.array([-1.0, 2.0, -1.0], np.float32) / np.sqrt(6.0)


def check_geometry(c: ml_collections.ConfigDict) -> None:
    """A ConfigError naming the key to change if the grid does not fit."""
    cell = c.crop_size // GRID
    if c.crop_size > c.resize_size:
        raise ConfigError(
            f"config.relpatch.crop_size={c.crop_size} is larger than resize_size="
            f"{c.resize_size}: raise resize_size to at least {c.crop_size}."
        )
    needed = GRID * (c.patch_size + 2 * math.ceil(c.min_gap / 2))
    if c.patch_size < 1 or c.min_gap < 0 or needed > GRID * cell:
        raise ConfigError(
            f"a {GRID}x{GRID} grid of {c.patch_size} px patches at least {c.min_gap} px apart "
            f"needs crop_size >= {needed} (and resize_size >= crop_size), but "
            f"config.relpatch.crop_size={c.crop_size} gives {cell} px cells: raise crop_size "
            "and resize_size, or lower patch_size / min_gap."
        )
    if c.chromatic not in CHROMATIC_REMEDIES:
        raise ConfigError(
            f"unknown config.relpatch.chromatic={c.chromatic!r}: use one of {CHROMATIC_REMEDIES}."
        )


def patch_offsets(
    seed: tf.Tensor | None, *, crop_size: int, patch_size: int, min_gap: int
) -> tf.Tensor:
    """Top-left corners (y, x) of the 9 patches in crop coordinates, int32 [9, 2], row-major.

    Each patch lies in its own `crop_size // 3` cell, at least `ceil(min_gap / 2)` px from the
    cell's edges, so neighbours are at least `min_gap` apart; its position is uniform over what
    remains (the jitter). `seed=None` centres every patch in its cell (evaluation)."""
    cell = crop_size // GRID
    margin = math.ceil(min_gap / 2)
    jitter = cell - patch_size - 2 * margin  # Positions 0..jitter inside the allowed range.
    if seed is None:
        within = tf.fill([GRID * GRID, 2], (cell - patch_size) // 2)
    else:
        within = margin + tf.random.stateless_uniform(
            [GRID * GRID, 2], seed, minval=0, maxval=jitter + 1, dtype=tf.int32
        )
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    cell_corners = tf.constant(np.stack([rows, cols], axis=1) * cell, tf.int32)
    return cell_corners + within


def cut_patches(image: tf.Tensor, offsets: tf.Tensor, patch_size: int) -> tf.Tensor:
    """[9, patch_size, patch_size, C] patches of `image` at `offsets` (from `patch_offsets`)."""
    return tf.stack(
        [
            tf.slice(image, [offsets[i, 0], offsets[i, 1], 0], [patch_size, patch_size, -1])
            for i in range(GRID * GRID)
        ]
    )


def drop_colors(patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Doersch's colour dropping: keep one random channel, replace the other two by Gaussian
    noise with 1/100 of the kept channel's standard deviation."""
    channel_seed, noise_seed = augment.split_seed(seed, 2)
    keep = tf.random.stateless_uniform([], channel_seed, minval=0, maxval=3, dtype=tf.int32)
    kept = patch[..., keep]
    noise = tf.random.stateless_normal(tf.shape(patch), noise_seed) * tf.math.reduce_std(kept) / 100
    return tf.where(tf.range(3) == keep, patch, noise)


def project_out_green_magenta(image: tf.Tensor) -> tf.Tensor:
    """Doersch's projection: every pixel minus its component along the green-magenta axis."""
    a = tf.constant(GREEN_MAGENTA)
    return image - tf.reduce_sum(image * a, axis=-1, keepdims=True) * a


def grayscale_mean(image: tf.Tensor) -> tf.Tensor:
    """Revisiting's `to_gray`: the mean of R, G and B repeated over three channels."""
    return tf.tile(tf.reduce_mean(image, axis=-1, keepdims=True), [1, 1, 3])


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    # Revisiting's `resize` (tf.image.resize_images: bilinear, squashes the aspect ratio).
    return tf.image.resize(augment.to_float(image)[None], [size, size])[0]


def patch_example(
    image: tf.Tensor, seed: tf.Tensor | None, c: ml_collections.ConfigDict
) -> tf.Tensor:
    """The 9 standardised patches of one image, float32 [9, p, p, 3]; `seed=None` gives the
    deterministic evaluation patches (central crop, centred patches, no grey or colour drop)."""
    image = _resize(image, c.resize_size)
    slack = c.resize_size - c.crop_size
    if seed is None:
        corner = tf.fill([2], slack // 2)
    else:
        gray_seed, crop_seed, patch_seed, drop_seed = augment.split_seed(seed, 4)
        image = augment.apply_with_probability(
            grayscale_mean, c.grayscale_probability, gray_seed, image
        )
        corner = tf.random.stateless_uniform(
            [2], crop_seed, minval=0, maxval=slack + 1, dtype=tf.int32
        )
    crop = tf.slice(image, [corner[0], corner[1], 0], [c.crop_size, c.crop_size, 3])
    offsets = patch_offsets(
        None if seed is None else patch_seed,
        crop_size=c.crop_size,
        patch_size=c.patch_size,
        min_gap=c.min_gap,
    )
    patches = cut_patches(crop, offsets, c.patch_size)
    if c.chromatic == "project":
        patches = project_out_green_magenta(patches)
    elif c.chromatic == "color_drop" and seed is not None:
        patches = tf.stack(
            [drop_colors(patches[i], s) for i, s in enumerate(augment.split_seed(drop_seed, 9))]
        )
    patches = tf.map_fn(tf.image.per_image_standardization, patches)
    return tf.ensure_shape(patches, [GRID * GRID, c.patch_size, c.patch_size, 3])


class RelPatchModel(nnx.Module):
    """Shared encoder -> embedding per patch; fusion head on (neighbour, centre) pairs."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        model, c = config.model, config.relpatch
        self.encoder = encoder_from_config(model, rngs=rngs)
        # Revisiting embeds each patch with the network's final 1000-way layer (`embed_dim`).
        self.embed = nnx.Linear(self.encoder.feature_dim, c.embed_dim, rngs=rngs)
        self.head = PatchPairHead(
            2 * c.embed_dim,
            hidden_dim=c.fusion_hidden_dim,
            num_classes=len(NEIGHBOURS),
            dropout=c.dropout,
            rngs=rngs,
        )
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)

    def __call__(
        self, patches: jax.Array, *, train: bool, dropout_rng: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """patches [N, 9, h, w, C] -> logits [N, 8, 8] for the pairs (NEIGHBOURS[i], centre),
        and the encoder features of each image (mean over its 9 patches) [N, F]."""
        n, p = patches.shape[:2]
        # [N, 9] -> [9N] keeps each device's rows local, like SimCLR's two views.
        x = self.encoder(patches.reshape((n * p, *patches.shape[2:])), train=train)
        pairs = pair_embeddings(self.embed(x).reshape((n, p, -1)))
        logits = self.head(pairs, train=train, dropout_rng=dropout_rng)
        return logits, x.reshape((n, p, -1)).mean(axis=1)


def pair_embeddings(e: jax.Array) -> jax.Array:
    """[N, 9, D] patch embeddings -> [N, 8, 2D]: pair i is (NEIGHBOURS[i], centre), concatenated."""
    centre = jnp.broadcast_to(e[:, CENTRE : CENTRE + 1], (e.shape[0], len(NEIGHBOURS), e.shape[2]))
    return jnp.concatenate([e[:, NEIGHBOURS, :], centre], axis=-1)


def relpatch_loss(logits: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean 8-way cross-entropy over every (image, pair); label i for pair i."""
    labels = jnp.broadcast_to(jnp.arange(len(NEIGHBOURS)), logits.shape[:-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"pretext_accuracy": accuracy}


class RelativePatchPosition:
    """The pretext task: its training example (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        check_geometry(config.relpatch)
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"patches": patch_example(image, seed, self.config.relpatch)}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its 9 patches in their 3x3 grid, 2 px
        apart, each rescaled from its standardised values to [0, 1] (a flat patch is grey)."""
        patches = example["patches"]
        low = patches.min(axis=(1, 2, 3), keepdims=True)
        span = patches.max(axis=(1, 2, 3), keepdims=True) - low
        shown = np.where(span > 0, (patches - low) / np.where(span > 0, span, 1), 0.5)
        p, gap = patches.shape[1], 2
        side = GRID * p + (GRID - 1) * gap
        mosaic = np.ones((side, side, 3), np.float32)
        for i, patch in enumerate(shown):
            row, col = divmod(i, GRID)
            mosaic[row * (p + gap) : row * (p + gap) + p, col * (p + gap) : col * (p + gap) + p] = (
                patch
            )
        return [mosaic]

    def eval_input(self, image: tf.Tensor, *, crop_proportion: float, patches: bool) -> tf.Tensor:
        """What transfer evaluators feed the encoder: the 9 evaluation patches [9, p, p, 3]
        (their features are averaged, as in Revisiting's `combine_patches=avg_pool`), or the
        whole image at the pretext crop's scale [crop_size, crop_size, 3] (`eval_view`: the
        central `crop_proportion`, as SimCLR evaluates), standardised."""
        if patches:
            return patch_example(image, None, self.config.relpatch)
        size = self.config.relpatch.crop_size
        whole = augment.eval_view(image, size=size, crop_proportion=crop_proportion)
        if self.config.relpatch.chromatic == "project":
            whole = project_out_green_magenta(whole)
        return tf.ensure_shape(tf.image.per_image_standardization(whole), [size, size, 3])

    def build_model(self, rngs: nnx.Rngs) -> RelPatchModel:
        return RelPatchModel(self.config, rngs=rngs)

    def loss(
        self, model: RelPatchModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        logits, features = model(batch["patches"], train=train, dropout_rng=rng if train else None)
        return *relpatch_loss(logits), features

"""Host-side (tf.data) patch geometry shared by the patch-based pretext tasks (relative patch
position, jigsaw): Revisiting-SSL's preprocessing (google/revisiting-self-supervised,
`patch_model_preprocess.py`, `patch_utils.py`): resize the image to a square, turn it grey
(mean of RGB) with some probability, take a random square crop, split it into a grid of cells
and take a random `patch_size` crop inside each cell (the jitter), then standardise every patch
on its own (`tf.image.per_image_standardization`, so low-level statistics do not give the
position away).

Patches never overlap: each stays inside its own cell, and `min_gap` > 0 keeps neighbouring
patches at least that many pixels apart. Doersch's remedies for chromatic aberration:
`color_drop` keeps one random colour channel per patch and replaces the other two with Gaussian
noise of 1/100 of its standard deviation; `project` removes the green-magenta component of
every pixel (x - (x.a)a with a = (-1, 2, -1)/sqrt(6)), in training and evaluation alike.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import tensorflow as tf

from selfsup.data import augment

GREEN_MAGENTA = np.array([-1.0, 2.0, -1.0], np.float32) / np.sqrt(6.0)


def patch_offsets(
    seed: tf.Tensor, *, grid: int, crop_size: int, patch_size: int, min_gap: int
) -> tf.Tensor:
    """Top-left corners (y, x) of the grid x grid patches in crop coordinates, int32
    [grid * grid, 2], row-major.

    Each patch lies in its own `crop_size // grid` cell, at least `ceil(min_gap / 2)` px from the
    cell's edges, so neighbours are at least `min_gap` apart; its position is uniform over what
    remains (the jitter)."""
    cell = crop_size // grid
    margin = math.ceil(min_gap / 2)
    jitter = cell - patch_size - 2 * margin  # Positions 0..jitter inside the allowed range.
    within = margin + tf.random.stateless_uniform(
        [grid * grid, 2], seed, minval=0, maxval=jitter + 1, dtype=tf.int32
    )
    return tf.constant(cell_corners(grid, cell)) + within


def cell_corners(grid: int, cell: int) -> np.ndarray:
    """Top-left corners (y, x) of a grid x grid of `cell` px cells, int32 [grid * grid, 2],
    row-major."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return (np.stack([rows, cols], axis=1) * cell).astype(np.int32)


def cut_patches(image: tf.Tensor, offsets: tf.Tensor, patch_size: int) -> tf.Tensor:
    """[P, patch_size, patch_size, C] patches of `image` at the P `offsets` (from
    `patch_offsets`)."""
    return tf.stack(
        [
            tf.slice(image, [offsets[i, 0], offsets[i, 1], 0], [patch_size, patch_size, -1])
            for i in range(offsets.shape[0])
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
    image: tf.Tensor, seed: tf.Tensor, c: ml_collections.ConfigDict, *, grid: int
) -> tf.Tensor:
    """The grid x grid standardised training patches of one image, float32
    [grid * grid, p, p, 3], in row-major order. `c` holds the geometry (`resize_size`,
    `crop_size`, `patch_size`, `min_gap`), `grayscale_probability` and `chromatic`."""
    image = _resize(image, c.resize_size)
    slack = c.resize_size - c.crop_size
    gray_seed, crop_seed, patch_seed, drop_seed = augment.split_seed(seed, 4)
    image = augment.apply_with_probability(
        grayscale_mean, c.grayscale_probability, gray_seed, image
    )
    corner = tf.random.stateless_uniform([2], crop_seed, minval=0, maxval=slack + 1, dtype=tf.int32)
    crop = tf.slice(image, [corner[0], corner[1], 0], [c.crop_size, c.crop_size, 3])
    offsets = patch_offsets(
        patch_seed,
        grid=grid,
        crop_size=c.crop_size,
        patch_size=c.patch_size,
        min_gap=c.min_gap,
    )
    patches = cut_patches(crop, offsets, c.patch_size)
    if c.chromatic == "project":
        patches = project_out_green_magenta(patches)
    elif c.chromatic == "color_drop":
        patches = tf.stack(
            [
                drop_colors(patches[i], s)
                for i, s in enumerate(augment.split_seed(drop_seed, grid * grid))
            ]
        )
    patches = tf.map_fn(tf.image.per_image_standardization, patches)
    return tf.ensure_shape(patches, [grid * grid, c.patch_size, c.patch_size, 3])


def eval_patches(image: tf.Tensor, c: ml_collections.ConfigDict, *, grid: int) -> tf.Tensor:
    """Revisiting's evaluation patches of a patch model, float32 [grid * grid, p, p, 3]
    row-major (`config/evaluation/jigsaw_or_relative_patch_location.sh`: `resize_small`, `crop`,
    `crop_patches` with `patch_jitter` 0, `standardization`): the image area-resized so that its
    shorter side is `c.eval_smaller_size` (both sides rounded), its central square of
    grid x `patch_size` px cut into adjacent `patch_size` tiles, each standardised (ImageNet:
    224, a central 192 crop, nine 64 px tiles)."""
    image = augment.to_float(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    ratio = c.eval_smaller_size / tf.cast(tf.minimum(height, width), tf.float32)
    height = tf.cast(tf.round(tf.cast(height, tf.float32) * ratio), tf.int32)
    width = tf.cast(tf.round(tf.cast(width, tf.float32) * ratio), tf.int32)
    image = tf.image.resize(image[None], [height, width], method="area")[0]
    side = grid * c.patch_size
    crop = tf.image.crop_to_bounding_box(
        image, (height - side) // 2, (width - side) // 2, side, side
    )
    patches = cut_patches(crop, tf.constant(cell_corners(grid, c.patch_size)), c.patch_size)
    if c.chromatic == "project":
        patches = project_out_green_magenta(patches)
    patches = tf.map_fn(tf.image.per_image_standardization, patches)
    return tf.ensure_shape(patches, [grid * grid, c.patch_size, c.patch_size, 3])


def eval_views(c: ml_collections.ConfigDict, *, grid: int, crop_proportion: float) -> dict:
    """A patch task's evaluation inputs: `image`, the whole image at the pretext crop's scale
    [crop_size, crop_size, 3] (`eval_view`: the central `crop_proportion`, as SimCLR evaluates),
    standardised as the patches are; `patches`, `eval_patches`, whose features the evaluators
    average (Revisiting's `combine_patches=avg_pool`)."""

    def image_view(image: tf.Tensor) -> tf.Tensor:
        # From the float image, so the view stays float (unrounded) for the host's standardisation.
        whole = augment.eval_view(
            augment.to_float(image), size=c.crop_size, crop_proportion=crop_proportion
        )
        if c.chromatic == "project":
            whole = project_out_green_magenta(whole)
        size = [c.crop_size, c.crop_size, 3]
        return tf.ensure_shape(tf.image.per_image_standardization(whole), size)

    return {"image": image_view, "patches": lambda image: eval_patches(image, c, grid=grid)}


def rescaled(images: np.ndarray) -> np.ndarray:
    """[n, h, w, 3] standardised images, each rescaled from its own range to [0, 1] for display
    (a flat one is grey)."""
    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = images.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (images - low) / np.where(span > 0, span, 1), 0.5)


def grid_mosaic(patches: np.ndarray, *, grid: int, gap: int = 2) -> np.ndarray:
    """[grid * grid, p, p, 3] standardised patches as one [h, w, 3] picture in [0, 1], patches
    `gap` px apart in their grid, each rescaled from its own range (`rescaled`)."""
    shown = rescaled(patches)
    p = patches.shape[1]
    side = grid * p + (grid - 1) * gap
    mosaic = np.ones((side, side, 3), np.float32)
    for i, patch in enumerate(shown):
        top, left = (p + gap) * np.array(divmod(i, grid))
        mosaic[top : top + p, left : left + p] = patch
    return mosaic

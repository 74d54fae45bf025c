"""Host-side (tf.data) whole-image training views of the classic pretext tasks (rotation,
exemplar): a crop, a flip and a colour distortion, each drawn from an explicit stateless seed.

`crop="inception"` is the crop of Revisiting-SSL's `inception_preprocess` (TF-slim's
`inception_preprocessing`, fast mode): a random box of at least `min_crop_area` of the image,
aspect ratio 3/4..4/3, resized to `size` (bicubic, as `augment.random_resized_crop`; slim's fast
mode resizes bilinearly). `crop="padded"` is Gidaris et al.'s CIFAR crop: the image resized to
`size`, zero-padded by `crop_padding` px on every side, and a random `size` crop of that. `flip`
mirrors left-right with probability 1/2. `color` is slim's fast-mode `distort_color`: brightness
+U[-32/255, 32/255], then saturation xU[0.5, 1.5], then a clip to [0, 1]. Views are
`augment.host_view`s: uint8 from a uint8 image without `color`, else float32 in [0, 1].
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from selfsup.data import augment

CROPS = ("inception", "padded")
BRIGHTNESS_DELTA = 32 / 255  # slim's `distort_color`.
SATURATION_RANGE = (0.5, 1.5)


def padded_crop(image: tf.Tensor, seed: tf.Tensor, *, size: int, padding: int) -> tf.Tensor:
    """Gidaris' `RandomCrop(size, padding)`: a random [size, size] crop of the image (resized to
    `size`) framed by `padding` px of zeros."""
    image = augment.resize(image, size=size)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, [size, size, 3], seed)


def inception_color(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """slim's fast-mode colour distortion: random brightness, then saturation, then a clip."""
    brightness_seed, saturation_seed = augment.split_seed(seed, 2)
    image = tf.image.stateless_random_brightness(
        augment.to_float(image), BRIGHTNESS_DELTA, brightness_seed
    )
    image = tf.image.stateless_random_saturation(image, *SATURATION_RANGE, saturation_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


def training_view(
    image: tf.Tensor, seed: tf.Tensor, c: ml_collections.ConfigDict, *, size: int
) -> tf.Tensor:
    """One view [size, size, 3] of an image (an `augment.host_view`): `c.crop` (with
    `c.min_crop_area` or `c.crop_padding`), then `c.flip` and `c.color` if set."""
    crop_seed, flip_seed, color_seed = augment.split_seed(seed, 3)
    if c.crop == "inception":
        view = augment.random_resized_crop(
            image, crop_seed, size=size, area_range=(c.min_crop_area, 1.0)
        )
    else:
        view = padded_crop(image, crop_seed, size=size, padding=c.crop_padding)
    if c.flip:
        view = augment.random_flip(view, flip_seed)
    if c.color:
        view = inception_color(view, color_seed)
    return augment.host_view(tf.ensure_shape(view, [size, size, 3]), image, photometric=c.color)


def quarter_turns(image: tf.Tensor) -> tf.Tensor:
    """[4, s, s, C]: a square image turned counter-clockwise by 0, 90, 180 and 270 degrees
    (`np.rot90`'s k = 0..3, the rotation labels of Gidaris and Revisiting)."""
    return tf.stack([tf.image.rot90(image, k) for k in range(4)])

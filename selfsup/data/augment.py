"""Image augmentations of the SimCLR recipe (plus BYOL's solarize), as TensorFlow ops for the
host input pipeline.

Each op matches google-research/simclr (`tf2/data_util.py`, impl='simclrv2': multiplicative
brightness) but draws its randomness from an explicit stateless seed, a shape-[2] int32/int64
tensor, instead of TF's global random state: the pipeline derives one seed per example from
(config seed, example index), so an example gets the same augmentation in every run and after
a resume. Ops that need several random numbers split their seed with
`tf.random.experimental.stateless_split`. Every op takes a uint8 or float [H, W, 3] image
(float meaning [0, 1]), returns float32 in [0, 1], and gives identical results eagerly and
inside `tf.data.Dataset.map`.

A view leaves the host as uint8 when it was cut from a uint8 image by geometric ops alone
(crop, resize, flip): a quarter of float32's bytes to the device, which converts it back
(`augment_jax.to_float`, bit for bit as `to_float` here). The rounding after a resize (at most
0.5/255) is the one torchvision's PIL pipelines make; an unresized crop is exact. A view that a
photometric op made on the host stays float32, which 8 bits could not hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from selfsup.data.augment_jax import ColorJitter

Op = Callable[[tf.Tensor], tf.Tensor]


def to_float(image: tf.Tensor) -> tf.Tensor:
    # simclr converts to float [0, 1] before any op (convert_image_dtype divides uint8 by 255).
    return tf.image.convert_image_dtype(image, tf.float32)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """A float image in [0, 1] -> uint8, rounded to the nearest level (`to_float`'s inverse on
    8-bit images)."""
    return tf.cast(tf.round(image * 255.0), tf.uint8)


def host_view(view: tf.Tensor, image: tf.Tensor, *, photometric: bool) -> tf.Tensor:
    """`view`, made from `image`, as it leaves the host: uint8 when `image` was uint8 and no
    `photometric` op made it, else float32 (the module docstring says why)."""
    return to_uint8(view) if image.dtype == tf.uint8 and not photometric else view


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def apply_with_probability(op: Op, p: float, seed: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """simclr's `random_apply`: `op(image)` with probability `p`, else `image`."""
    coin = tf.random.stateless_uniform([], seed, minval=0.0, maxval=1.0, dtype=tf.float32)
    return tf.cond(coin < tf.cast(p, tf.float32), lambda: op(image), lambda: image)


def _resize_bicubic(image: tf.Tensor, size: int) -> tf.Tensor:
    # Bicubic overshoots at edges; clip so the [0, 1] contract holds after every op.
    resized = tf.image.resize(image[None], [size, size], method=tf.image.ResizeMethod.BICUBIC)[0]
    return tf.clip_by_value(resized, 0.0, 1.0)


ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def crop_box(
    shape: tf.Tensor,
    seed: tf.Tensor,
    *,
    sampler: str,
    area_range: tuple[float, float],
    aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(offset_y, offset_x, height, width) of a random crop box of an image of `shape`, drawn
    as `sampler`'s reference draws it:

    - "simclr": google-research/simclr `distorted_bounding_box_crop`:
      `tf.image.stateless_sample_distorted_bounding_box` with the whole image as the object and
      `min_object_covered=0.1` (so boxes cover at least ~10% even where `area_range` starts
      at 8%), 100 attempts, then the whole image.
    - "byol": deepmind-research byol `dataset._decode_and_random_crop`: one draw of an area
      fraction U(area_range) and a log-uniform aspect ratio, sides rounded and clamped to the
      image (here also to at least 1 px), the box uniform over the positions that fit.
    - "torchvision": `RandomResizedCrop.get_params`: up to 10 such draws, the first whose box
      fits the image; if none does, the central crop of the whole image clamped to the aspect
      ratio range.
    """
    if sampler == "simclr":
        whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=whole_image,
            seed=seed,
            min_object_covered=0.1,
            aspect_ratio_range=aspect_ratio_range,
            area_range=area_range,
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        return begin[0], begin[1], size[0], size[1]
    return _drawn_box(
        shape,
        seed,
        tries=1 if sampler == "byol" else 10,
        area_range=area_range,
        aspect_ratio_range=aspect_ratio_range,
    )


def _drawn_box(shape, seed, *, tries, area_range, aspect_ratio_range):
    # `tries` = 1: DeepMind's sampler (clamped); 10: torchvision's (first fit, else the centre).
    area_seed, ratio_seed, y_seed, x_seed = split_seed(seed, 4)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32)
    target = tf.random.stateless_uniform([tries], area_seed, *area_range) * area
    log_ratio = [math.log(r) for r in aspect_ratio_range]
    ratio = tf.exp(tf.random.stateless_uniform([tries], ratio_seed, *log_ratio))
    # tf.round, like Python's round, rounds half to even.
    w = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    if tries == 1:
        h, w = tf.clip_by_value(h[0], 1, height), tf.clip_by_value(w[0], 1, width)
        fits = tf.constant(True)
    else:
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        fits, first = tf.reduce_any(ok), tf.argmax(tf.cast(ok, tf.int32))
        fallback_h, fallback_w = _central_fallback(height, width, aspect_ratio_range)
        h = tf.where(fits, h[first], fallback_h)
        w = tf.where(fits, w[first], fallback_w)
    offset_y = tf.random.stateless_uniform([], y_seed, 0, height - h + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform([], x_seed, 0, width - w + 1, dtype=tf.int32)
    offset_y = tf.where(fits, offset_y, (height - h) // 2)
    offset_x = tf.where(fits, offset_x, (width - w) // 2)
    return offset_y, offset_x, h, w


def _central_fallback(height, width, aspect_ratio_range):
    # torchvision's fallback: the whole image, cut to the nearest aspect ratio in range.
    low, high = aspect_ratio_range
    in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
    narrow_h = tf.cast(tf.round(tf.cast(width, tf.float32) / low), tf.int32)
    wide_w = tf.cast(tf.round(tf.cast(height, tf.float32) * high), tf.int32)
    h = tf.where(in_ratio < low, narrow_h, height)
    w = tf.where(in_ratio > high, wide_w, width)
    return h, w


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE,
    sampler: str = "simclr",
) -> tf.Tensor:
    """A random crop (`crop_box` by `sampler`) resized to [size, size] (bicubic, simclr's
    `crop_and_resize`)."""
    image = to_float(image)
    box = crop_box(
        tf.shape(image),
        seed,
        sampler=sampler,
        area_range=area_range,
        aspect_ratio_range=aspect_ratio_range,
    )
    return _resize_bicubic(tf.image.crop_to_bounding_box(image, *box), size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Left-right mirror with probability 1/2 (simclr `tf.image.random_flip_left_right`)."""
    return tf.image.stateless_random_flip_left_right(to_float(image), seed)


def _random_brightness(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
    """simclr `random_brightness`, impl='simclrv2': multiply by U[max(1 - d, 0), 1 + d]."""
    factor = tf.random.stateless_uniform(
        [], seed, minval=max(1.0 - max_delta, 0.0), maxval=1.0 + max_delta, dtype=tf.float32
    )
    return image * factor


def color_jitter_components(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    random_order: bool = True,
    additive_brightness: bool = False,
) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue (simclr `color_jitter_rand`/`_nonrand`).

    Brightness multiplies by U[max(1 - b, 0), 1 + b] (adds U[-b, b] with `additive_brightness`,
    as BYOL's augmentations and simclr v1 do); contrast and saturation scale by
    U[1 - c, 1 + c] and U[1 - s, 1 + s] (`tf.image.stateless_random_contrast`/`_saturation`);
    hue shifts by U[-h, h] (`tf.image.stateless_random_hue`). A component with strength 0 is
    skipped. The four ops run in a seeded random permutation (fixed order brightness, contrast,
    saturation, hue when `random_order=False`), clipping to [0, 1] after each.
    """
    image = to_float(image)
    order_seed, *op_seeds = split_seed(seed, 5)

    def skip_if_zero(strength: float, op: Op) -> Op:
        return (lambda x: x) if strength == 0 else op

    brightness_seed, contrast_seed, saturation_seed, hue_seed = op_seeds

    def random_brightness(x):
        if additive_brightness:
            return tf.image.stateless_random_brightness(x, brightness, brightness_seed)
        return _random_brightness(x, brightness_seed, brightness)

    ops = [
        skip_if_zero(brightness, random_brightness),
        skip_if_zero(
            contrast,
            lambda x: tf.image.stateless_random_contrast(
                x, 1.0 - contrast, 1.0 + contrast, contrast_seed
            ),
        ),
        skip_if_zero(
            saturation,
            lambda x: tf.image.stateless_random_saturation(
                x, 1.0 - saturation, 1.0 + saturation, saturation_seed
            ),
        ),
        skip_if_zero(hue, lambda x: tf.image.stateless_random_hue(x, hue, hue_seed)),
    ]
    if random_order:
        order = tf.random.experimental.stateless_shuffle(tf.range(4), order_seed)
        for position in range(4):
            branches = [lambda op=op, x=image: op(x) for op in ops]
            image = tf.switch_case(order[position], branches)
            image = tf.clip_by_value(image, 0.0, 1.0)
    else:
        for op in ops:
            image = tf.clip_by_value(op(image), 0.0, 1.0)
    return image


def color_jitter(
    image: tf.Tensor, seed: tf.Tensor, *, strength: float, random_order: bool = True
) -> tf.Tensor:
    """simclr `color_jitter`: brightness/contrast/saturation 0.8 * strength, hue 0.2 * strength."""
    return color_jitter_components(
        image,
        seed,
        brightness=0.8 * strength,
        contrast=0.8 * strength,
        saturation=0.8 * strength,
        hue=0.2 * strength,
        random_order=random_order,
    )


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma (`tf.image.rgb_to_grayscale`) repeated over three channels (simclr `to_grayscale`)."""
    return tf.tile(tf.image.rgb_to_grayscale(to_float(image)), [1, 1, 3])


def random_color_distortion(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    jitter: ColorJitter,
    p_jitter: float = 0.8,
    p_grayscale: float = 0.2,
) -> tf.Tensor:
    """simclr `random_color_jitter`: colour jitter of `jitter`'s ranges (SimCLR's:
    `ColorJitter.simclr(strength)`) with prob. `p_jitter`, then grayscale with prob.
    `p_grayscale` (independent draws)."""
    image = to_float(image)
    jitter_coin, jitter_seed, grayscale_coin = split_seed(seed, 3)

    def jittered(x):
        return color_jitter_components(
            x,
            jitter_seed,
            brightness=jitter.brightness,
            contrast=jitter.contrast,
            saturation=jitter.saturation,
            hue=jitter.hue,
            additive_brightness=jitter.additive_brightness,
        )

    image = apply_with_probability(jittered, p_jitter, jitter_coin, image)
    return apply_with_probability(to_grayscale, p_grayscale, grayscale_coin, image)


def _blur(image: tf.Tensor, kernel_size: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """simclr `gaussian_blur`: separable Gaussian, zero 'SAME' padding (so borders darken)."""
    radius = kernel_size // 2
    taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-(taps**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(image[None], horizontal, [1, 1, 1, 1], padding="SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], padding="SAME")
    return blurred[0]


def gaussian_blur(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    p: float = 0.5,
    kernel_fraction: float = 0.1,
    sigma_range: tuple[float, float] = (0.1, 2.0),
) -> tf.Tensor:
    """simclr `random_blur` with probability `p`: a Gaussian with sigma ~ U[sigma_range], kernel
    size `floor(height * kernel_fraction)` rounded up to odd (simclr: height // 10; images under
    20 px get a 1-tap kernel, i.e. no blur), zero padding 'SAME', then clip to [0, 1]."""
    image = to_float(image)
    coin_seed, sigma_seed = split_seed(seed, 2)
    height = tf.cast(tf.shape(image)[0], tf.float64)
    kernel_size = tf.cast(tf.floor(height * kernel_fraction), tf.int32)
    sigma = tf.random.stateless_uniform(
        [], sigma_seed, minval=sigma_range[0], maxval=sigma_range[1], dtype=tf.float32
    )
    blurred = apply_with_probability(lambda x: _blur(x, kernel_size, sigma), p, coin_seed, image)
    return tf.clip_by_value(blurred, 0.0, 1.0)


def solarize(image: tf.Tensor, *, threshold: float = 0.5) -> tf.Tensor:
    """BYOL's solarization (Grill et al. 2020): pixels at or above `threshold` become `1 - x`."""
    image = to_float(image)
    return tf.where(image < threshold, image, 1.0 - image)


def random_solarize(image: tf.Tensor, seed: tf.Tensor, *, p: float) -> tf.Tensor:
    """`solarize` with probability `p` (BYOL applies it with p=0.2 to one view; SimCLR never)."""
    return apply_with_probability(solarize, p, seed, to_float(image))


# simclr's CROP_PROPORTION ("standard for ImageNet"): evaluation keeps the central 87.5%.
EVAL_CROP_PROPORTION = 0.875
# simclr sets test_crop=False for image_size <= 32 (CIFAR): small images are not cropped.
MAX_UNCROPPED_SIZE = 32


def resize(image: tf.Tensor, *, size: int) -> tf.Tensor:
    """A plain bicubic resize to [size, size] (simclr's non-crop path, which only reshapes and so
    needs the image at `size` already; here that case is the identity)."""
    return tf.ensure_shape(_resize_bicubic(to_float(image), size), [size, size, 3])


def central_crop_box(
    height: tf.Tensor, width: tf.Tensor, *, crop_proportion: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(offset_y, offset_x, crop_height, crop_width) of simclr's square central crop
    (`_compute_crop_shape` with aspect ratio 1, `center_crop`'s offsets): `crop_proportion` of
    the shorter side on both sides, rounded half to even, so the crop is square and a
    non-square image is cropped, never squashed."""
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    # At least 1 px, so a tiny image with a small proportion still has a crop.
    side = tf.maximum(tf.cast(tf.math.rint(crop_proportion * shorter), tf.int32), 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def eval_view(
    image: tf.Tensor, *, size: int, crop_proportion: float = EVAL_CROP_PROPORTION
) -> tf.Tensor:
    """Evaluation preprocessing, simclr's `preprocess_for_eval`: for `size` > 32 the square
    central crop of `crop_proportion` of the shorter side (`central_crop_box`), bicubic resize to
    [size, size]; for `size` <= 32 (simclr's test_crop=False) a plain resize. A `host_view`:
    uint8 from uint8 (exact when the image is `size` already, as CIFAR's are at 32 px)."""
    view = to_float(image)
    if size > MAX_UNCROPPED_SIZE:
        shape = tf.shape(view)
        view = tf.image.crop_to_bounding_box(
            view, *central_crop_box(shape[0], shape[1], crop_proportion=crop_proportion)
        )
    return host_view(resize(view, size=size), image, photometric=False)


def simclr_view(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    color_strength: float,
    crop: bool = True,
    min_crop_area: float = 0.08,
    crop_sampler: str = "simclr",
    flip: bool = True,
    color: bool = True,
    blur: bool = False,
    solarize_p: float = 0.0,
) -> tf.Tensor:
    """SimCLR's view (`augmented_view` in simclr's order, `preprocess_for_train` then
    `batch_random_blur`): colour jitter of strength `color_strength`, blur with p=0.5 if
    `blur`, then solarize with probability `solarize_p` (BYOL's last op)."""
    return augmented_view(
        image,
        seed,
        size=size,
        jitter=ColorJitter.simclr(color_strength) if color else None,
        blur_p=0.5 if blur else 0.0,
        solarize_p=solarize_p,
        crop=crop,
        min_crop_area=min_crop_area,
        crop_sampler=crop_sampler,
        flip=flip,
    )


def augmented_view(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    jitter: ColorJitter | None,
    blur_p: float,
    solarize_p: float,
    crop: bool = True,
    min_crop_area: float = 0.08,
    crop_sampler: str = "simclr",
    flip: bool = True,
) -> tf.Tensor:
    """One augmented view [size, size, 3], a `host_view`: random resized crop (its box drawn by
    `crop_box`'s `crop_sampler`; else a plain resize), flip, colour distortion (`jitter` with
    p=0.8, then grayscale with p=0.2; none if `jitter` is None), blur with probability
    `blur_p`, solarize with probability `solarize_p`, clip. SimCLR's, BYOL's and MoCo v2's
    views differ only in these arguments."""
    source = image
    # A 5-way split keeps the first four seeds of the earlier 4-way split (stateless_split is
    # prefix-stable), so adding solarize left every existing augmentation stream unchanged.
    crop_seed, flip_seed, color_seed, blur_seed, solarize_seed = split_seed(seed, 5)
    if crop:
        image = random_resized_crop(
            image, crop_seed, size=size, area_range=(min_crop_area, 1.0), sampler=crop_sampler
        )
    else:
        image = resize(image, size=size)
    if flip:
        image = random_flip(image, flip_seed)
    if jitter is not None:
        image = random_color_distortion(image, color_seed, jitter=jitter)
    if blur_p > 0:
        image = gaussian_blur(image, blur_seed, p=blur_p)
    if solarize_p > 0:
        image = random_solarize(image, solarize_seed, p=solarize_p)
    view = tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [size, size, 3])
    photometric = jitter is not None or blur_p > 0 or solarize_p > 0
    return host_view(view, source, photometric=photometric)


def two_views(image: tf.Tensor, seed: tf.Tensor, **view_kwargs) -> tf.Tensor:
    """Two independent `simclr_view`s of one image from split seeds: [2, size, size, 3]."""
    return tf.stack(
        [simclr_view(image, view_seed, **view_kwargs) for view_seed in split_seed(seed, 2)]
    )

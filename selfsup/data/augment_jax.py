"""The colour part of the SimCLR recipe (plus BYOL's solarize) in JAX, to run on the accelerator
inside the jitted train step, as deepmind-research's BYOL does: the host then only decodes, crops
and flips, the part that needs the whole image. Each op is the twin of the TF op in
`selfsup.data.augment` (TF's kernel formulas for contrast, saturation and hue, the luma weights
of `tf.image.rgb_to_grayscale`, simclr's blur with zero 'SAME' padding, the same random ranges,
probabilities and clipping) but draws its randomness from a JAX key. Single-image ops take
float32 [H, W, 3] in [0, 1]; `color_augment_views` vmaps them over [N, 2, H, W, 3] (uint8 views
from the host converted by `to_float`) with one key per view, so under `jax.jit` with a
batch-sharded input every device augments its own rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Op = Callable[[jax.Array], jax.Array]

# tf.image.rgb_to_grayscale's weights (ITU-R 601 luma, as TF rounds them).
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """The ranges of a colour jitter (here and in `selfsup.data.augment`): brightness, contrast,
    saturation and hue strengths, and whether brightness adds a delta (BYOL, simclr v1) or
    multiplies (simclr v2, torchvision)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    additive_brightness: bool = False

    @classmethod
    def simclr(cls, strength: float) -> ColorJitter:
        """simclr `color_jitter`: brightness/contrast/saturation 0.8 * strength, hue 0.2 *
        strength."""
        return cls(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


def to_float(images: jax.Array) -> jax.Array:
    """Host images as float32 in [0, 1]: uint8 scaled as `augment.to_float` (TF's
    `convert_image_dtype`) scales it, x * float32(1/255), so a view that crossed to the device as
    uint8 is bit for bit the float32 the host would have made; floats pass unchanged."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) * jnp.float32(1 / 255)
    return images


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """simclrv2 brightness: a multiplication (not TF's additive `adjust_brightness`)."""
    return image * factor


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """`tf.image.adjust_contrast`: each channel scaled by `factor` around its own mean."""
    mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
    return (image - mean) * factor + mean


def rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hue, saturation, value in [0, 1], by the formulas of TF's AdjustSaturation kernel."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.maximum(jnp.maximum(r, g), b)
    chroma = value - jnp.minimum(jnp.minimum(r, g), b)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    # Grey pixels have no hue; the safe denominator keeps NaNs out of the unused branch.
    norm = 1.0 / (6.0 * jnp.where(chroma > 0, chroma, 1.0))
    hue = jnp.where(
        r == value,
        norm * (g - b),
        jnp.where(g == value, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0),
    )
    hue = jnp.where(chroma > 0, hue, 0.0)
    return jnp.where(hue < 0, hue + 1.0, hue), saturation, value


def hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
    """The inverse of `rgb_to_hsv` (TF's kernel), [..., 3]."""
    chroma = saturation * value
    low = value - chroma
    sector = (hue % 1.0) * 6.0
    category = jnp.floor(sector).astype(jnp.int32)
    mid = chroma * (1.0 - jnp.abs(sector % 2.0 - 1.0))

    def channel(max_sectors, mid_sectors):
        """`chroma` in the hue sectors where this channel is largest, `mid` where it is the
        middle one, 0 where smallest; plus `low`."""
        is_max = (category == max_sectors[0]) | (category == max_sectors[1])
        is_mid = (category == mid_sectors[0]) | (category == mid_sectors[1])
        return jnp.where(is_max, chroma, jnp.where(is_mid, mid, 0.0)) + low

    return jnp.stack(
        [channel((0, 5), (1, 4)), channel((1, 2), (0, 3)), channel((3, 4), (2, 5))], -1
    )


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """`tf.image.adjust_saturation`: HSV saturation times `factor`, clipped to [0, 1]."""
    hue, saturation, value = rgb_to_hsv(image)
    return hsv_to_rgb(hue, jnp.clip(saturation * factor, 0.0, 1.0), value)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """`tf.image.adjust_hue`: hue rotated by `delta` (in turns), saturation and value kept."""
    hue, saturation, value = rgb_to_hsv(image)
    return hsv_to_rgb((hue + delta) % 1.0, saturation, value)


def to_grayscale(image: jax.Array) -> jax.Array:
    """Luma repeated over three channels (augment.to_grayscale)."""
    luma = image @ jnp.asarray(LUMA_WEIGHTS, image.dtype)
    return jnp.repeat(luma[..., None], 3, axis=-1)


def gaussian_filter(image: jax.Array, kernel_size: int, sigma: jax.Array) -> jax.Array:
    """simclr's separable Gaussian of `2 * (kernel_size // 2) + 1` taps, zero 'SAME' padding
    (so borders darken, as in the TF op).

    Each pass is a product with a banded matrix whose rows hold the taps, cut off at the image
    border (that cut-off is the zero padding). With one random sigma per image, vmap turns a
    convolution into a grouped one with a kernel per image, which ran several times slower on
    CPU than this batched matmul.
    """
    radius = kernel_size // 2
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-(taps**2) / (2.0 * sigma**2))
    kernel /= jnp.sum(kernel)

    def band(n: int) -> jax.Array:
        """[n, n]: output pixel i takes kernel[j - i + radius] of input pixel j."""
        offset = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
        tap = kernel[jnp.clip(offset + radius, 0, 2 * radius)]
        return jnp.where(jnp.abs(offset) <= radius, tap, 0.0)

    height, width = image.shape[-3], image.shape[-2]
    # Full fp32: the TF op sums in fp32, where default GPU/TPU matmuls would round to bf16.
    rows = jnp.einsum("wv,hvc->hwc", band(width), image, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("hu,uwc->hwc", band(height), rows, precision=jax.lax.Precision.HIGHEST)


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    """BYOL's solarization: pixels at or above `threshold` become `1 - x` (augment.solarize)."""
    return jnp.where(image < threshold, image, 1.0 - image)


def apply_with_probability(op: Op, p: float, key: jax.Array, image: jax.Array) -> jax.Array:
    """`op(image)` with probability `p`, else `image` (augment.apply_with_probability)."""
    coin = jax.random.uniform(key, (), jnp.float32)
    return jax.lax.cond(coin < p, op, lambda x: x, image)


def color_jitter_components(
    image: jax.Array,
    key: jax.Array,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    additive_brightness: bool = False,
) -> jax.Array:
    """Random brightness (x U[max(1 - b, 0), 1 + b], or + U[-b, b] with `additive_brightness`),
    contrast (U[1 - c, 1 + c]), saturation (U[1 - s, 1 + s]) and hue (+ U[-h, h]) in a random
    order, clipping to [0, 1] after each; a component of strength 0 is skipped
    (augment.color_jitter_components, random order)."""
    order_key, brightness_key, contrast_key, saturation_key, hue_key = jax.random.split(key, 5)

    def uniform(key, low, high):
        return jax.random.uniform(key, (), jnp.float32, low, high)

    def component(strength: float, op: Op) -> Op:
        return (lambda x: x) if strength == 0 else op

    if additive_brightness:
        brightness_delta = uniform(brightness_key, -brightness, brightness)
    else:
        brightness_factor = uniform(brightness_key, max(1.0 - brightness, 0.0), 1.0 + brightness)
    contrast_factor = uniform(contrast_key, 1.0 - contrast, 1.0 + contrast)
    saturation_factor = uniform(saturation_key, 1.0 - saturation, 1.0 + saturation)
    hue_delta = uniform(hue_key, -hue, hue)
    ops = [
        component(
            brightness,
            (lambda x: x + brightness_delta)
            if additive_brightness
            else (lambda x: adjust_brightness(x, brightness_factor)),
        ),
        component(contrast, lambda x: adjust_contrast(x, contrast_factor)),
        component(saturation, lambda x: adjust_saturation(x, saturation_factor)),
        component(hue, lambda x: adjust_hue(x, hue_delta)),
    ]
    order = jax.random.permutation(order_key, 4)

    def apply_in_order(position, image):
        return jnp.clip(jax.lax.switch(order[position], ops, image), 0.0, 1.0)

    # A loop, not four unrolled switches: under vmap every branch runs at every position, and
    # one loop body compiles in a quarter of the time.
    return jax.lax.fori_loop(0, 4, apply_in_order, image)


def color_jitter(image: jax.Array, key: jax.Array, *, strength: float) -> jax.Array:
    """simclr `color_jitter`: brightness/contrast/saturation 0.8 * strength, hue 0.2 * strength."""
    return color_jitter_components(
        image,
        key,
        brightness=0.8 * strength,
        contrast=0.8 * strength,
        saturation=0.8 * strength,
        hue=0.2 * strength,
    )


def random_color_distortion(
    image: jax.Array,
    key: jax.Array,
    *,
    jitter: ColorJitter,
    p_jitter: float = 0.8,
    p_grayscale: float = 0.2,
) -> jax.Array:
    """Colour jitter of `jitter`'s ranges with probability `p_jitter`, then grayscale with
    probability `p_grayscale` (independent draws; augment.random_color_distortion)."""
    jitter_coin, jitter_key, grayscale_coin = jax.random.split(key, 3)

    def jittered(x):
        return color_jitter_components(x, jitter_key, **dataclasses.asdict(jitter))

    image = apply_with_probability(jittered, p_jitter, jitter_coin, image)
    return apply_with_probability(to_grayscale, p_grayscale, grayscale_coin, image)


def gaussian_blur(
    image: jax.Array,
    key: jax.Array,
    *,
    p: float = 0.5,
    kernel_fraction: float = 0.1,
    sigma_range: tuple[float, float] = (0.1, 2.0),
) -> jax.Array:
    """Blur with probability `p`, sigma ~ U[sigma_range], kernel `floor(height *
    kernel_fraction)` taps rounded up to odd (1 tap, no blur, under 20 px), then clip
    (augment.gaussian_blur)."""
    coin_key, sigma_key = jax.random.split(key)
    kernel_size = math.floor(image.shape[-3] * kernel_fraction)
    sigma = jax.random.uniform(sigma_key, (), jnp.float32, *sigma_range)
    blurred = apply_with_probability(
        lambda x: gaussian_filter(x, kernel_size, sigma), p, coin_key, image
    )
    return jnp.clip(blurred, 0.0, 1.0)


def color_augment(
    image: jax.Array,
    key: jax.Array,
    *,
    strength: float,
    color: bool = True,
    blur: bool = False,
    solarize_p: float = 0.0,
) -> jax.Array:
    """The colour ops of one `augment.simclr_view`: `augment_colors` with SimCLR's jitter of
    `strength` (if `color`) and blur with p=0.5 (if `blur`)."""
    return augment_colors(
        image,
        key,
        jitter=ColorJitter.simclr(strength) if color else None,
        blur_p=0.5 if blur else 0.0,
        solarize_p=solarize_p,
    )


def augment_colors(
    image: jax.Array,
    key: jax.Array,
    *,
    jitter: ColorJitter | None,
    blur_p: float,
    solarize_p: float,
) -> jax.Array:
    """The colour ops of one `augment.augmented_view`, in its order: colour distortion (none if
    `jitter` is None), blur with probability `blur_p`, solarize with probability `solarize_p`,
    clip."""
    color_key, blur_key, solarize_key = jax.random.split(key, 3)
    if jitter is not None:
        image = random_color_distortion(image, color_key, jitter=jitter)
    if blur_p > 0:
        image = gaussian_blur(image, blur_key, p=blur_p)
    if solarize_p > 0:
        image = apply_with_probability(solarize, solarize_p, solarize_key, image)
    return jnp.clip(image, 0.0, 1.0)


def color_augment_views(views: jax.Array, key: jax.Array, **color_kwargs) -> jax.Array:
    """`color_augment` of every view of [N, V, H, W, 3], each with its own key split from `key`
    (so a view's colours depend only on `key` and its position, on any device count)."""
    keys = jax.random.split(key, views.shape[:2])

    def one_view(image, key):
        return color_augment(image, key, **color_kwargs)

    return jax.vmap(jax.vmap(one_view))(to_float(views), keys)


def augment_colors_per_view(
    views: jax.Array, key: jax.Array, per_view: Sequence[dict]
) -> jax.Array:
    """`augment_colors` of [N, V, H, W, 3] with view v's arguments `per_view[v]` (BYOL's views
    differ), each view with its own key split from `key` as `color_augment_views` splits it."""
    keys = jax.random.split(key, views.shape[:2])
    views = to_float(views)
    columns = [
        jax.vmap(lambda image, key, kwargs=kwargs: augment_colors(image, key, **kwargs))(
            views[:, v], keys[:, v]
        )
        for v, kwargs in enumerate(per_view)
    ]
    return jnp.stack(columns, axis=1)

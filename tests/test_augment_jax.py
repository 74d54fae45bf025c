"""Tests for selfsup.data.augment_jax: each fixed-factor op against its TF twin in
selfsup.data.augment / tf.image, the random ops' distributions against the TF recipe's on the
same image, and the on-device SimCLR loss path (8 devices vs 1, deterministic per key)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_augment import binomial_tolerance, over_seeds, random_image, seed

from selfsup.config import ConfigError, load_config_file
from selfsup.data import augment
from selfsup.data import augment_jax as aj
from selfsup.pretext import get_task
from selfsup.pretext.simclr import SimCLR
from selfsup.train.state import split_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
N = 500  # Draws per distribution test.


def jax_over_keys(op, n: int) -> np.ndarray:
    """`op(key)` for n JAX keys, vmapped and jitted, stacked."""
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(jax.jit(jax.vmap(op))(keys))


def test_to_float_is_tf_convert_image_dtype_bit_for_bit():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    expected = tf.image.convert_image_dtype(levels, tf.float32).numpy()
    np.testing.assert_array_equal(jax.jit(aj.to_float)(levels), expected)
    floats = random_image(8)
    np.testing.assert_array_equal(aj.to_float(floats), floats)


def test_colour_ops_take_uint8_views_as_their_float_values():
    views = np.random.default_rng(1).integers(0, 256, (3, 2, 16, 16, 3)).astype(np.uint8)
    kwargs = dict(strength=1.0, blur=True, solarize_p=0.3)
    augment_views = jax.jit(lambda v: aj.color_augment_views(v, jax.random.key(2), **kwargs))
    as_float = tf.image.convert_image_dtype(views, tf.float32).numpy()
    np.testing.assert_array_equal(augment_views(views), augment_views(as_float))


def edge_case_image(size: int) -> np.ndarray:
    """Random pixels plus the HSV conversion's edge cases: greys, black, white, pure
    primaries, and pixels with two equal channels."""
    image = random_image(size)
    specials = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    specials += [[0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [0.7, 0.2, 0.7], [0.3, 0.3, 0.9]]
    image[0, : len(specials)] = specials
    return image


@pytest.mark.parametrize("factor", [0.2, 0.75, 1.6])
def test_contrast_and_saturation_equal_tf_for_a_fixed_factor(factor):
    image = edge_case_image(16)
    np.testing.assert_allclose(
        aj.adjust_contrast(image, factor), tf.image.adjust_contrast(image, factor), atol=1e-5
    )
    np.testing.assert_allclose(
        aj.adjust_saturation(image, factor), tf.image.adjust_saturation(image, factor), atol=1e-5
    )


@pytest.mark.parametrize("delta", [-0.45, -0.1, 0.03, 0.2, 0.5])
def test_hue_equals_tf_for_a_fixed_delta(delta):
    image = edge_case_image(16)
    np.testing.assert_allclose(
        aj.adjust_hue(image, delta), tf.image.adjust_hue(image, delta), atol=1e-5
    )


def test_grayscale_and_solarize_equal_tf():
    image = edge_case_image(16)
    np.testing.assert_allclose(aj.to_grayscale(image), augment.to_grayscale(image), atol=1e-6)
    np.testing.assert_array_equal(aj.solarize(image), augment.solarize(image))


@pytest.mark.parametrize("size,sigma", [(16, 1.0), (40, 1.3), (64, 0.4), (64, 2.0)])
def test_blur_equals_tf_for_a_fixed_sigma_and_kernel(size, sigma):
    image = random_image(size, width=size + 8)
    expected = augment.gaussian_blur(image, seed(0), p=1.0, sigma_range=(sigma, sigma))
    actual = aj.gaussian_blur(image, jax.random.key(0), p=1.0, sigma_range=(sigma, sigma))
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    if size >= 20:
        assert np.abs(actual - image).max() > 0.05  # A real blur, not the 1-tap identity.


def test_brightness_factor_is_multiplicative_and_in_range():
    image = random_image(8, 0.05, 0.4)  # 0.4 * 1.8 <= 1: no clipping.
    out = jax_over_keys(lambda k: aj.color_jitter_components(image, k, brightness=0.8), N)
    ratios = out / image
    factors = ratios[:, 0, 0, 0]
    np.testing.assert_allclose(
        ratios, np.broadcast_to(factors[:, None, None, None], ratios.shape), rtol=1e-5
    )
    assert factors.min() >= 0.2 and factors.max() <= 1.8
    assert factors.min() < 0.25 and factors.max() > 1.75
    # Uniform on [0.2, 1.8]: mean 1, standard deviation 1.6 / sqrt(12).
    assert abs(factors.mean() - 1.0) < 4.5 * 1.6 / np.sqrt(12 * N)


def per_image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per draw: mean pixel value, pixel standard deviation, mean saturation, mean hue."""
    hsv = tf.image.rgb_to_hsv(images).numpy()
    return {
        "mean": images.mean(axis=(1, 2, 3)),
        "std": images.std(axis=(1, 2, 3)),
        "saturation": hsv[..., 1].mean(axis=(1, 2)),
        "red_minus_blue": (images[..., 0] - images[..., 2]).mean(axis=(1, 2)),
    }


def assert_same_distribution(tf_draws: np.ndarray, jax_draws: np.ndarray) -> None:
    """The per-image statistics of two independent samples agree in mean (4.5 standard errors
    of the difference) and in spread (standard deviations within 4.5 standard errors)."""
    n = len(tf_draws)
    for name, (a, b) in {
        k: (v, per_image_stats(jax_draws)[k]) for k, v in per_image_stats(tf_draws).items()
    }.items():
        spread = np.sqrt((a.var() + b.var()) / n)
        assert abs(a.mean() - b.mean()) < 4.5 * spread + 1e-6, name
        # The standard error of a sample standard deviation is about sd / sqrt(2n).
        assert abs(a.std() - b.std()) < 4.5 * np.hypot(a.std(), b.std()) / np.sqrt(2 * n) + 1e-6, (
            name
        )


@pytest.mark.parametrize(
    "components",
    [
        dict(contrast=0.8),
        dict(saturation=0.8),
        dict(hue=0.2),
    ],
    ids=lambda c: "+".join(c),
)
def test_jitter_components_match_the_tf_distribution(components):
    image = random_image(8)
    tf_out = over_seeds(lambda s: augment.color_jitter_components(image, s, **components), N)
    jax_out = jax_over_keys(lambda k: aj.color_jitter_components(image, k, **components), N)
    assert_same_distribution(tf_out, jax_out)
    assert jax_out.min() >= 0.0 and jax_out.max() <= 1.0


def test_additive_brightness_adds_one_delta_per_image_in_tf_and_jax():
    """BYOL's brightness: x + U[-0.4, 0.4], the same delta on every pixel (none clips here)."""
    image = 0.45 + 0.1 * random_image(8)
    tf_out = over_seeds(
        lambda s: augment.color_jitter_components(
            image, s, brightness=0.4, additive_brightness=True
        ),
        N,
    )
    jax_out = jax_over_keys(
        lambda k: aj.color_jitter_components(image, k, brightness=0.4, additive_brightness=True),
        N,
    )
    for out in (tf_out, jax_out):
        delta = (out - image).reshape(N, -1)
        np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape), atol=1e-6)
        assert -0.4 <= delta.min() < -0.3 and 0.3 < delta.max() <= 0.4  # Both signs, full range.
    assert_same_distribution(tf_out, jax_out)


def test_per_view_colours_give_each_view_its_own_arguments_and_key():
    views = jnp.broadcast_to(random_image(24), (3, 2, 24, 24, 3))
    key = jax.random.key(4)
    jitter = aj.ColorJitter(0.4, 0.4, 0.2, 0.1, additive_brightness=True)
    per_view = [
        dict(jitter=jitter, blur_p=1.0, solarize_p=0.0),
        dict(jitter=None, blur_p=0.0, solarize_p=1.0),
    ]
    out = jax.jit(lambda v, k: aj.augment_colors_per_view(v, k, per_view))(views, key)
    keys = jax.random.split(key, (3, 2))
    for n in range(3):
        for v in range(2):
            expected = aj.augment_colors(views[n, v], keys[n, v], **per_view[v])
            np.testing.assert_allclose(out[n, v], expected, atol=1e-6)
    np.testing.assert_array_equal(out[:, 1], aj.solarize(views[:, 1]))  # Always, nothing else.


def test_color_distortion_matches_tf_probabilities_and_statistics():
    image = random_image(8)
    gray = augment.to_grayscale(image).numpy()
    tf_out = over_seeds(
        lambda s: augment.random_color_distortion(image, s, jitter=aj.ColorJitter.simclr(1.0)), N
    )
    jax_out = jax_over_keys(
        lambda k: aj.random_color_distortion(image, k, jitter=aj.ColorJitter.simclr(1.0)), N
    )
    for out in (tf_out, jax_out):
        is_gray = np.all(out == out[..., :1], axis=(1, 2, 3))
        untouched = np.all(np.isclose(out, image, atol=1e-6), axis=(1, 2, 3))
        gray_only = np.all(np.isclose(out, gray, atol=1e-6), axis=(1, 2, 3))
        jittered = ~(untouched | gray_only)
        assert abs(jittered.mean() - 0.8) < binomial_tolerance(0.8, N)
        assert abs(is_gray.mean() - 0.2) < binomial_tolerance(0.2, N)
        assert abs((jittered & is_gray).mean() - 0.16) < binomial_tolerance(0.16, N)
    assert_same_distribution(tf_out, jax_out)


def test_blur_and_solarize_follow_their_probabilities_and_the_tf_statistics():
    image = random_image(32)  # 3-tap kernel.
    tf_blurred = over_seeds(lambda s: augment.gaussian_blur(image, s, p=0.5), N)
    jax_blurred = jax_over_keys(lambda k: aj.gaussian_blur(image, k, p=0.5), N)
    # Sigma below ~0.13 changes nothing in float32 (about 1.5% of draws), as in the TF test.
    changed = ~np.all(jax_blurred == image, axis=(1, 2, 3))
    assert abs(changed.mean() - 0.5) < binomial_tolerance(0.5, N)
    assert_same_distribution(tf_blurred, jax_blurred)
    solarized = aj.solarize(image)
    out = jax_over_keys(
        lambda k: aj.color_augment(image, k, strength=1.0, color=False, solarize_p=0.3), N
    )
    is_solarized = np.all(out == solarized, axis=(1, 2, 3))
    assert np.all(is_solarized | np.all(out == image, axis=(1, 2, 3)))
    assert abs(is_solarized.mean() - 0.3) < binomial_tolerance(0.3, N)


def test_color_augment_matches_the_colour_part_of_a_tf_view():
    # A TF view without crop and flip is exactly the colour part of the recipe.
    image = random_image(24)
    kwargs = dict(blur=True, solarize_p=0.2)
    tf_out = over_seeds(
        lambda s: augment.simclr_view(
            image, s, size=24, color_strength=0.5, crop=False, flip=False, **kwargs
        ),
        N,
    )
    jax_out = jax_over_keys(lambda k: aj.color_augment(image, k, strength=0.5, **kwargs), N)
    assert_same_distribution(tf_out, jax_out)


def _on_device_config(**simclr) -> ml_collections.ConfigDict:
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    config.online_probe_classes = 0
    config.model.dtype = "float32"  # The recipe's "auto" is resolved by pretraining.
    config.simclr.update({"color_on_device": True, "blur": True, "solarize": 0.2, **simclr})
    return config


def _jitted_loss(task, mesh, views):
    model = task.build_model(nnx.Rngs(0))
    graphdef, params, stats = split_model(model)
    params, stats = jax.device_put((params, stats), NamedSharding(mesh, P()))
    views = jax.device_put(views, NamedSharding(mesh, P("data")))

    @jax.jit
    def loss(params, stats, views, rng):
        model = nnx.merge(graphdef, params, stats)
        return task.loss(model, {"views": views}, rng, train=True)[0]

    return lambda rng: float(loss(params, stats, views, rng))


@pytest.mark.slow  # Compiles a ResNet for two meshes.
def test_on_device_loss_equals_on_1_and_8_devices_and_is_deterministic_per_key():
    views = np.random.default_rng(1).uniform(size=(16, 2, 24, 24, 3)).astype(np.float32)
    mesh1 = jax.make_mesh(
        (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
    )
    mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    task = SimCLR(_on_device_config())
    loss1, loss8 = _jitted_loss(task, mesh1, views), _jitted_loss(task, mesh8, views)
    key = jax.random.fold_in(jax.random.key(0), 7)  # As the loop derives the step's key.
    np.testing.assert_allclose(loss1(key), loss8(key), rtol=1e-5)
    assert loss8(key) == loss8(key)
    losses = [loss8(jax.random.fold_in(jax.random.key(0), step)) for step in (8, 9)]
    assert min(abs(loss - loss8(key)) for loss in losses) > 1e-4


class ViewsRecorder:
    """Stands in for the model: its 'features' are the views it was given."""

    def __call__(self, views, *, train):
        flat = views.reshape(views.shape[0], 2, -1)
        return flat[:, 0], flat[:, 1], views


def test_the_loss_colours_each_view_with_its_own_key_from_the_step_key():
    views = jnp.broadcast_to(random_image(24), (4, 2, 24, 24, 3))  # Identical inputs.
    key = jax.random.key(11)
    view_keys = jax.random.split(key, (4, 2))
    on_device = SimCLR(_on_device_config())

    @jax.jit
    def seen_and_expected(views, key):
        seen = on_device.loss(ViewsRecorder(), {"views": views}, key, train=True)[2]
        expected = aj.color_augment(
            views[2, 1], view_keys[2, 1], strength=0.5, blur=True, solarize_p=0.2
        )
        return seen, expected

    seen, expected = seen_and_expected(views, key)
    # Fused inside vmap or not, XLA may round differently.
    np.testing.assert_allclose(seen[2, 1], expected, atol=1e-6)
    flat = np.asarray(seen).reshape(8, -1)
    assert len({view.tobytes() for view in flat}) == 8  # Eight different colourings.
    on_host = SimCLR(_on_device_config(color_on_device=False))
    seen_on_host = on_host.loss(ViewsRecorder(), {"views": views}, key, train=True)[2]
    np.testing.assert_array_equal(seen_on_host, views)


def test_with_color_on_device_the_host_only_crops_and_flips():
    image = np.random.default_rng(2).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    example = SimCLR(_on_device_config()).train_example(image, seed(5))["views"].numpy()
    expected = augment.two_views(
        image, seed(5), size=32, color_strength=0.5, color=False, blur=False
    ).numpy()
    np.testing.assert_array_equal(example, expected)
    host = SimCLR(_on_device_config(color_on_device=False))
    assert not np.allclose(host.train_example(image, seed(5))["views"].numpy(), expected)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_solarize_probability_outside_unit_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"--config\.simclr\.solarize to a number in \[0, 1\]"):
        get_task(_on_device_config(solarize=value))

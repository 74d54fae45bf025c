"""Rotation prediction: each image in all four rotations, labels 0-3 matching the quarter turns
actually applied (checked on pixels), and the views it turns."""

import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from selfsup.config import ConfigError, load_config_file
from selfsup.data import views
from selfsup.pretext import get_task, rotation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def task(**view) -> rotation.Rotation:
    config = load_config_file(CONFIGS / "rotation_cifar10.py", "runlocal")
    config.image_size = 16
    config.rotation.update(view)
    return get_task(config)


def ramp(blue: int = 90, size: int = 16) -> np.ndarray:
    """Red rises to the right, green downwards: the right edge is the brightest, and no two
    quarter turns of it look alike."""
    x, y = np.meshgrid(np.linspace(0, 255, size), np.linspace(40, 200, size))
    return np.stack([x, y, np.full_like(x, blue)], -1).astype(np.uint8)


def bright_edge(image: np.ndarray) -> str:
    edges = {
        "right": image[:, -1].mean(),
        "top": image[0].mean(),
        "left": image[:, 0].mean(),
        "bottom": image[-1].mean(),
    }
    return max(edges, key=edges.get)


def test_rotation_k_is_k_counter_clockwise_quarter_turns_of_the_view():
    # No crop, flip or colour: the view is the image, so the turns can be read off its pixels.
    plain = task(crop="padded", crop_padding=0, flip=False, color=False)
    example = plain.train_example(tf.constant(ramp()), tf.constant([0, 0]))
    rotations = example["rotations"].numpy()
    assert rotations.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(rotations[0], ramp())  # uint8: no colour op made it.
    assert [bright_edge(r.mean(-1)) for r in rotations] == ["right", "top", "left", "bottom"]
    for k in range(4):
        np.testing.assert_array_equal(rotations[k], np.rot90(rotations[0], k))
    # With random crops, flips and colours, the four are still turns of one and the same view.
    augmented = task(crop="inception", flip=True, color=True)
    rng = np.random.default_rng(0)
    for seed in range(4):
        image = tf.constant(rng.integers(0, 256, (24, 30, 3), np.uint8))
        rotations = augmented.train_example(image, tf.constant([seed, 1]))["rotations"].numpy()
        for k in range(1, 4):
            np.testing.assert_array_equal(rotations[k], np.rot90(rotations[0], k))
        assert not np.allclose(rotations[0], rotations[1])


def test_the_loss_labels_rotation_k_of_every_image_as_k():
    """A stand-in encoder whose feature i is the brightness of edge i (right, top, left,
    bottom) and an identity head classify every turn correctly exactly when the loss pairs the
    k-th rotation of each image with label k."""

    def edges(x, train):
        gray = x.mean(-1)
        return jnp.stack(
            [
                gray[:, :, -1].mean(1),
                gray[:, 0].mean(1),
                gray[:, :, 0].mean(1),
                gray[:, -1].mean(1),
            ],
            axis=1,
        )

    model = types.SimpleNamespace(encoder=edges, head=lambda f: 10 * f)
    plain = task(crop="padded", crop_padding=0, flip=False, color=False)
    example = plain.train_example(tf.constant(ramp()), tf.constant([0, 0]))["rotations"].numpy()
    other = plain.train_example(tf.constant(ramp(blue=20)), tf.constant([1, 0]))["rotations"]
    batch = {"rotations": np.stack([example, other.numpy()])}
    loss, metrics, features = plain.loss(model, batch, jax.random.key(0), train=True)
    assert float(metrics["pretext_accuracy"]) == 1.0
    np.testing.assert_allclose(features, edges(batch["rotations"][:, 0], False))  # Upright.
    # Swapping two rotations' labels makes exactly those two wrong.
    swapped = {"rotations": batch["rotations"][:, [0, 1, 3, 2]]}
    assert (
        float(plain.loss(model, swapped, jax.random.key(0), train=True)[1]["pretext_accuracy"])
        == 0.5
    )
    logits = np.log(np.full((2, 4, 4), 0.1) + 0.6 * np.eye(4))  # p = 0.7 on the right turn.
    np.testing.assert_allclose(
        float(rotation.rotation_loss(jnp.asarray(logits))[0]), -np.log(0.7 / 1.0), rtol=1e-6
    )


def test_padded_crop_is_a_translation_framed_by_zeros():
    image = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
    shifts = set()
    for s in range(60):
        crop = views.padded_crop(image, tf.constant([s, 2]), size=16, padding=4).numpy()
        framed = np.pad(image, [(4, 4), (4, 4), (0, 0)])
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.allclose(framed[dy : dy + 16, dx : dx + 16], crop, atol=1e-6)
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 30  # Of the 81 offsets.


def test_inception_color_shifts_brightness_and_scales_saturation_within_slims_ranges():
    grey = np.full((4, 4, 3), 0.5, np.float32)
    colour = np.broadcast_to(np.array([0.6, 0.4, 0.5], np.float32), (4, 4, 3))
    deltas, ratios = [], []
    for s in range(40):
        shifted = views.inception_color(grey, tf.constant([s, 0])).numpy()
        assert np.ptp(shifted) < 1e-6  # Grey has no saturation to scale.
        deltas.append(shifted.mean() - 0.5)
        jittered = views.inception_color(colour, tf.constant([s, 0])).numpy()
        # The same seed shifts brightness as for grey; saturation then scales the shifted colour.
        shifted = colour + deltas[-1]
        saturation = tf.image.rgb_to_hsv(np.stack([shifted, jittered]))[:, 0, 0, 1].numpy()
        ratios.append(saturation[1] / saturation[0])
    assert max(np.abs(deltas)) <= 32 / 255 + 1e-6 and np.ptp(deltas) > 32 / 255
    assert 0.5 - 1e-4 <= min(ratios) and max(ratios) <= 1.5 + 1e-4 and np.ptp(ratios) > 0.5


def test_an_unknown_crop_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config.rotation.crop='random' is invalid: .* one of"):
        task(crop="random")
    # A padding of 100000 px would make a 200032 px image per example.
    for padding in (-1, 100000):
        with pytest.raises(ConfigError, match=rf"crop_padding={padding} is invalid: .*\[0, 256\]"):
            task(crop="padded", crop_padding=padding)

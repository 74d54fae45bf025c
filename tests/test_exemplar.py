"""Exemplar: the semi-hard triplet loss against a float64 NumPy transcription of TF 1's
`triplet_semihard_loss`, copies of one image as positives and every other image's as negatives,
and the copies the input pipeline makes."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from selfsup.config import ConfigError, load_config_file
from selfsup.pretext import exemplar, get_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def masked_minimum(data, mask):
    axis_maximums = data.max(1, keepdims=True)
    return ((data - axis_maximums) * mask).min(1, keepdims=True) + axis_maximums


def masked_maximum(data, mask):
    axis_minimums = data.min(1, keepdims=True)
    return ((data - axis_minimums) * mask).max(1, keepdims=True) + axis_minimums


def triplet_semihard_reference(labels: np.ndarray, embeddings: np.ndarray, margin: float):
    """tf.contrib.losses.metric_learning.triplet_semihard_loss (TF 1.x), line for line in float64.
    Also returns how many (anchor, positive) pairs had a semi-hard negative."""
    x = embeddings.astype(np.float64)
    b = len(labels)
    pdist = (x**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2.0 * x @ x.T
    pdist = np.maximum(pdist, 0.0) * (1 - np.eye(b))
    adjacency = labels[:, None] == labels[None, :]
    adjacency_not = ~adjacency
    pdist_tile = np.tile(pdist, [b, 1])
    mask = np.tile(adjacency_not, [b, 1]) & (pdist_tile > pdist.T.reshape(-1, 1))
    mask_final = (mask.astype(np.float64).sum(1, keepdims=True) > 0).reshape(b, b).T
    negatives_outside = masked_minimum(pdist_tile, mask).reshape(b, b).T
    negatives_inside = np.tile(masked_maximum(pdist, adjacency_not), [1, b])
    semi_hard_negatives = np.where(mask_final, negatives_outside, negatives_inside)
    loss_mat = margin + pdist - semi_hard_negatives
    mask_positives = adjacency.astype(np.float64) - np.eye(b)
    loss = np.maximum(loss_mat * mask_positives, 0.0).sum() / mask_positives.sum()
    return loss, int((mask_final & (mask_positives > 0)).sum())


def clustered(n: int, c: int, d: int, spread: float, seed: int = 0) -> np.ndarray:
    """[n, c, d]: c noisy copies around each of n random centres (overlapping for spread ~1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, 1, d))
    return (centres + spread * rng.normal(size=(n, c, d))).astype(np.float32)


@pytest.mark.parametrize(
    ("images", "spread", "margin"), [(6, 0.3, 0.5), (3, 3.0, 0.5), (3, 3.0, 2.0)]
)
def test_triplet_semihard_loss_matches_tf1_in_float64(images, spread, margin):
    z = clustered(images, 4, 5, spread).reshape(images * 4, 5)
    labels = np.repeat(np.arange(images), 4)
    expected, semi_hard = triplet_semihard_reference(labels, z, margin)
    # Copies spread wide: both of TF's branches occur, pairs with a semi-hard negative and
    # pairs whose positive is farther than every negative.
    assert 0 < semi_hard < images * 4 * 3 or spread < 1
    loss, grad = jax.value_and_grad(exemplar.triplet_semihard_loss, argnums=1)(
        jnp.asarray(labels), jnp.asarray(z), margin
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # The gradient too (the mined negative is piecewise constant): central differences.
    eps, numeric = 1e-6, np.zeros(z.shape)
    for index in np.ndindex(z.shape):
        step = np.zeros(z.shape)
        step[index] = eps
        plus = triplet_semihard_reference(labels, z + step, margin)[0]
        minus = triplet_semihard_reference(labels, z - step, margin)[0]
        numeric[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max())


def test_copies_of_an_image_are_positives_and_other_images_negatives():
    z = clustered(5, 3, 8, 0.05)
    # Revisiting's normalisation, over the batch axis, then the reference with image labels.
    flat = z.reshape(15, 8).astype(np.float64)
    flat /= np.sqrt((flat**2).sum(0, keepdims=True))
    expected, _ = triplet_semihard_reference(np.repeat(np.arange(5), 3), flat, 0.5)
    loss, metrics = exemplar.exemplar_loss(jnp.asarray(z), 0.5)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["pretext_accuracy"]) == 1.0  # Every copy's nearest is a sibling.
    # Regrouped so that each "image" holds copies of three different clusters: now the copies
    # it calls positives are far apart, and negatives near.
    mixed = z.transpose(1, 0, 2).reshape(5, 3, 8)
    loss_mixed, metrics_mixed = exemplar.exemplar_loss(jnp.asarray(mixed), 0.5)
    assert float(metrics_mixed["pretext_accuracy"]) == 0.0 and float(loss_mixed) > float(loss) + 0.3


def task(**overrides) -> exemplar.Exemplar:
    config = load_config_file(CONFIGS / "exemplar_cifar10.py", "runlocal")
    config.image_size = 16
    config.exemplar.update(overrides)
    return get_task(config)


def test_copies_are_standardised_views_grey_together_with_revisitings_probability():
    copies4 = task(copies=4)
    rng = np.random.default_rng(0)
    grey = []
    # One graph for the 150 draws (as tf.data runs it), not 150 eager calls.
    make_copies = tf.function(lambda image, seed: copies4.train_example(image, seed)["copies"])
    for s in range(150):
        image = tf.constant(rng.integers(0, 256, (20, 24, 3), np.uint8))
        copies = make_copies(image, tf.constant([s, 0], tf.int64)).numpy()
        assert copies.shape == (4, 16, 16, 3)
        flat = copies.reshape(4, -1)
        np.testing.assert_allclose(flat.mean(1), 0, atol=1e-5)
        np.testing.assert_allclose(flat.std(1), 1, rtol=1e-3)
        assert len({c.tobytes() for c in copies}) == 4  # Four different views.
        is_grey = [np.allclose(c[..., 0], c[..., 1], atol=1e-5) for c in copies]
        assert len(set(is_grey)) == 1  # The image turns grey before it is copied.
        grey.append(is_grey[0])
    assert abs(np.mean(grey) - 0.66) < 0.12  # 150 draws: ~3 standard errors.
    shown = copies4.display_views({"copies": copies})
    assert len(shown) == 4 and all(0 <= v.min() and v.max() <= 1 for v in shown)


def test_bad_settings_are_config_errors_naming_the_exemplar_key():
    with pytest.raises(ConfigError, match=r"copies=1 is invalid: .* an integer in \[2, 64\]"):
        task(copies=1)
    with pytest.raises(ConfigError, match=r"copies=100000 is invalid: .* an integer in \[2, 64\]"):
        task(copies=100000)
    with pytest.raises(ConfigError, match=r"config.exemplar.crop='center' is invalid: .* one of"):
        task(crop="center")
    with pytest.raises(ConfigError, match=r"--config.exemplar.margin to a number in \(0, 10\]"):
        task(margin=-1.0)
    with pytest.raises(ConfigError, match=r"--config.exemplar.grayscale_probability to a number"):
        task(grayscale_probability=2.0)
    with pytest.raises(ConfigError, match=r"--config.exemplar.embed_dim to an integer in \[1,"):
        task(embed_dim=0)

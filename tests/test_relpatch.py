"""Relative patch position: patch geometry, labels, the chromatic-aberration remedies, loss and
gradients on 1 vs 8 devices, and a trivially solvable synthetic set learnt to ~100%."""

import itertools
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from selfsup.config import ConfigError, load_config_file
from selfsup.data import patches as patch_input
from selfsup.pretext import get_task, relpatch
from selfsup.train.state import split_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Grid position of each label, as (row, column) offsets from the centre.
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def geometry(**overrides) -> ml_collections.ConfigDict:
    c = load_config_file(CONFIGS / "relpatch_cifar10.py").relpatch
    c.update(overrides)
    return c


@pytest.mark.parametrize(("crop_size", "patch_size", "min_gap"), [(72, 16, 2), (255, 64, 0)])
def test_patches_stay_in_their_cells_keep_the_gap_and_jitter_over_the_full_range(
    crop_size, patch_size, min_gap
):
    cell = crop_size // 3
    margin = -(-min_gap // 2)
    draws = np.stack(
        [
            patch_input.patch_offsets(
                tf.constant([s, 7]),
                grid=3,
                crop_size=crop_size,
                patch_size=patch_size,
                min_gap=min_gap,
            ).numpy()
            for s in range(400)
        ]
    )  # [draws, 9, (y, x)]
    assert draws.min() >= 0 and draws.max() + patch_size <= crop_size  # Inside the crop.
    rows, cols = np.divmod(np.arange(9), 3)
    within = draws - np.stack([rows, cols], axis=1) * cell
    assert within.min() >= margin and within.max() <= cell - patch_size - margin  # Own cell.
    # Jitter covers every allowed position, for each patch and axis.
    for p, axis in itertools.product(range(9), range(2)):
        assert set(within[:, p, axis]) == set(range(margin, cell - patch_size - margin + 1))
    for p in range(9):
        r, c = divmod(p, 3)
        if c < 2:  # Right neighbour: horizontal gap.
            assert (draws[:, p + 1, 1] - (draws[:, p, 1] + patch_size)).min() >= min_gap
        if r < 2:  # Neighbour below: vertical gap.
            assert (draws[:, p + 3, 0] - (draws[:, p, 0] + patch_size)).min() >= min_gap


def cell_colours() -> np.ndarray:
    """Nine RGB colours that per-patch standardisation keeps apart (distinct channel patterns)."""
    angles = np.arange(9) * 2 * np.pi / 9
    return np.stack([np.cos(angles), np.sin(angles), np.cos(2 * angles) * 0.3], 1) * 0.3 + 0.5


def grid_image(size: int = 72, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A uint8 image whose 3x3 cells are filled with `cell_colours()` (plus pixel noise)."""
    cell = size // 3
    image = np.repeat(np.repeat(cell_colours().reshape(3, 3, 3), cell, 0), cell, 1)
    image = image + np.random.default_rng(seed).normal(0, noise, image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))


def test_each_patch_comes_from_its_cell_and_each_label_is_its_neighbours_direction():
    c = geometry(resize_size=72, crop_size=72, grayscale_probability=0.0)
    for seed in range(5):
        patches = patch_input.patch_example(grid_image(), tf.constant([seed, 0]), c, grid=3).numpy()
        templates = [standardise(np.broadcast_to(colour, (16, 16, 3))) for colour in cell_colours()]
        found = [int(np.argmin([np.abs(p - t).max() for t in templates])) for p in patches]
        assert found == list(range(9))
        for p in patches:  # Per-patch standardisation: zero mean, unit variance.
            assert abs(p.mean()) < 1e-5 and abs(p.std() - 1) < 1e-3
    # The pairs the model classifies: label i is (NEIGHBOURS[i], centre), NEIGHBOURS[i] lying in
    # direction DIRECTIONS[i] from the centre.
    for label, (dr, dc) in enumerate(DIRECTIONS):
        assert relpatch.NEIGHBOURS[label] == (1 + dr) * 3 + (1 + dc)
    embeddings = np.eye(9, dtype=np.float32)[None]  # Patch p embeds to one-hot p.
    pairs = np.asarray(relpatch.pair_embeddings(embeddings))
    for label in range(8):
        np.testing.assert_array_equal(pairs[0, label, :9], np.eye(9)[relpatch.NEIGHBOURS[label]])
        np.testing.assert_array_equal(pairs[0, label, 9:], np.eye(9)[relpatch.CENTRE])
    logits = np.where(np.eye(8, dtype=bool), 5.0, 0.0)[None]  # Pair i predicted as class i.
    loss, metrics = relpatch.relpatch_loss(logits)
    assert float(metrics["pretext_accuracy"]) == 1.0
    np.testing.assert_allclose(float(loss), np.log1p(7 * np.exp(-5)), rtol=1e-5)


def test_patch_example_is_the_same_eagerly_and_in_tf_data():
    c = geometry(chromatic="color_drop")
    image, seed = grid_image(noise=0.05), tf.constant([3, 4], tf.int64)
    eager = patch_input.patch_example(image, seed, c, grid=3).numpy()
    ds = tf.data.Dataset.from_tensors((image, seed)).map(
        lambda i, s: patch_input.patch_example(i, s, c, grid=3)
    )
    np.testing.assert_array_equal(eager, next(iter(ds)).numpy())
    assert eager.shape == (9, 16, 16, 3)


def test_grayscale_is_the_mean_of_rgb_and_applied_with_its_probability():
    image = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        patch_input.grayscale_mean(image).numpy(), np.repeat(image.mean(-1, keepdims=True), 3, -1)
    )
    c = geometry(grayscale_probability=0.66, chromatic="none")
    colour = grid_image(noise=0.05)
    # One graph for the 300 draws (as tf.data runs it): eager calls cost ~25 ms each.
    first_patch = tf.function(lambda s: patch_input.patch_example(colour, s, c, grid=3)[0])
    grey = [
        np.allclose(p[..., 0], p[..., 1], atol=1e-5)
        for p in (first_patch(tf.constant([s, 1], tf.int64)) for s in range(300))
    ]
    assert abs(np.mean(grey) - 0.66) < 0.09  # 300 draws: ~3.4 standard errors.


def test_chromatic_remedies_match_doersch():
    rng = np.random.default_rng(0)
    patch = rng.uniform(size=(16, 16, 3)).astype(np.float32)
    projected = patch_input.project_out_green_magenta(patch).numpy()
    np.testing.assert_allclose(projected @ patch_input.GREEN_MAGENTA, 0, atol=1e-6)
    grey = np.repeat(patch[..., :1], 3, -1)  # Grey pixels have no green-magenta component.
    np.testing.assert_allclose(patch_input.project_out_green_magenta(grey).numpy(), grey, atol=1e-6)
    kept = set()
    for s in range(30):
        dropped = patch_input.drop_colors(patch, tf.constant([s, 0])).numpy()
        same = [np.array_equal(dropped[..., ch], patch[..., ch]) for ch in range(3)]
        assert sum(same) == 1
        keep = same.index(True)
        kept.add(keep)
        noise = np.delete(dropped, keep, axis=-1)
        assert abs(noise.mean()) < 3e-4
        np.testing.assert_allclose(noise.std(), patch[..., keep].std() / 100, rtol=0.1)
    assert kept == {0, 1, 2}


def test_impossible_grid_is_a_config_error_and_small_images_are_resized():
    config = load_config_file(CONFIGS / "relpatch_cifar10.py")
    config.relpatch.update(resize_size=60, crop_size=54, patch_size=17, min_gap=2)
    with pytest.raises(ConfigError, match=r"crop_size=54 is invalid: .* to at least 57, which"):
        get_task(config)
    config.relpatch.update(geometry(resize_size=64))
    with pytest.raises(ConfigError, match=r"at most resize_size=64 \(or raise resize_size to 72\)"):
        get_task(config)
    tiny = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)  # Smaller than a patch.
    patches = patch_input.patch_example(tiny, tf.constant([0, 0]), geometry(), grid=3).numpy()
    assert patches.shape == (9, 16, 16, 3)
    # Upsampled, the random pixels still vary within every patch: each is standardised.
    flat = patches.reshape(9, -1)
    np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(axis=1), 1.0, rtol=1e-3)


def _loss_and_grads(mesh, patches):
    config = load_config_file(CONFIGS / "relpatch_cifar10.py", "runlocal")
    config.model.dtype = "float32"  # The recipe's "auto" is resolved by pretraining.
    model = relpatch.RelPatchModel(config, rngs=nnx.Rngs(0))
    graphdef, params, stats = split_model(model)
    params, stats = jax.device_put((params, stats), NamedSharding(mesh, P()))
    patches = jax.device_put(patches, NamedSharding(mesh, P("data")))

    @jax.jit
    def loss_fn(params, stats, patches):
        def f(params):
            logits, _ = nnx.merge(graphdef, params, stats)(
                patches, train=True, dropout_rng=jax.random.key(3)
            )
            return relpatch.relpatch_loss(logits)[0]

        return jax.value_and_grad(f)(params)

    return jax.device_get(loss_fn(params, stats, patches))


@pytest.mark.slow  # Compiles the model's loss and gradients for two meshes.
def test_loss_and_gradients_equal_on_1_and_8_devices():
    patches = np.random.default_rng(1).normal(size=(16, 9, 16, 16, 3)).astype(np.float32)
    mesh1 = jax.make_mesh(
        (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
    )
    mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    loss1, grads1 = _loss_and_grads(mesh1, patches)
    loss8, grads8 = _loss_and_grads(mesh8, patches)
    np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
    flat1 = dict(jax.tree_util.tree_flatten_with_path(grads1)[0])
    flat8 = dict(jax.tree_util.tree_flatten_with_path(grads8)[0])
    assert flat1.keys() == flat8.keys() and len(flat1) > 10
    scale = max(np.abs(g).max() for g in flat1.values())
    for path, g1 in flat1.items():
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if name in ("embed/bias", "head/hidden/bias"):
            # Constant shifts that the fusion layer's BatchNorm removes: zero up to rounding.
            assert max(np.abs(g1).max(), np.abs(flat8[path]).max()) < 1e-5 * scale, name
            continue
        # Rounding only (test_simclr.py says why the bound is 1e-3); wrong statistics are O(1).
        np.testing.assert_allclose(g1, flat8[path], rtol=1e-3, atol=1e-4 * np.abs(g1).max())


def revisiting_eval_patches(image: np.ndarray, smaller_size: int, crop_size: int) -> np.ndarray:
    """google/revisiting-self-supervised's evaluation preprocessing of patch models, transcribed
    op by op (`preprocess.py` `get_resize_small`, `patch_model_preprocess.py` `crop` at test
    time and `image_to_patches` with 3 splits per side and no jitter, then
    `per_image_standardization`), on 0-255 pixels as it runs."""
    h, w = image.shape[:2]
    ratio = tf.cast(smaller_size, tf.float32) / tf.cast(min(h, w), tf.float32)
    h = int(tf.cast(tf.round(h * ratio), tf.int32))
    w = int(tf.cast(tf.round(w * ratio), tf.int32))
    resized = tf.compat.v1.image.resize_area(tf.cast(image, tf.float32)[None], [h, w])[0]
    dy, dx = (h - crop_size) // 2, (w - crop_size) // 2
    crop = tf.image.crop_to_bounding_box(resized, dy, dx, crop_size, crop_size)
    g = crop_size // 3
    tiles = [
        tf.image.crop_to_bounding_box(crop, i * g, j * g, g, g) for i in range(3) for j in range(3)
    ]
    return np.stack([tf.image.per_image_standardization(t).numpy() for t in tiles])


@pytest.mark.parametrize(("task", "shape"), [("relpatch", (300, 451)), ("jigsaw", (97, 61))])
def test_evaluation_patches_are_revisitings_pixel_for_pixel(task, shape):
    """ImageNet geometry (224, central 192, 64 px tiles) on a landscape image, the 32 px
    configs' (56, 48, 16) on a portrait one whose sides round."""
    name = "imagenet" if task == "relpatch" else "cifar10"
    c = load_config_file(CONFIGS / f"{task}_{name}.py")[task]
    image = np.random.default_rng(3).integers(0, 256, (*shape, 3)).astype(np.uint8)
    ours = get_task(load_config_file(CONFIGS / f"{task}_{name}.py")).eval_views(
        crop_proportion=0.875
    )["patches"](image)
    expected = revisiting_eval_patches(image, c.eval_smaller_size, 3 * c.patch_size)
    assert ours.shape == expected.shape == (9, c.patch_size, c.patch_size, 3)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-5)


def test_the_whole_image_input_is_standardised_from_the_unrounded_resize():
    # It stays on the host (standardised there), so no 8-bit rounding may come between.
    c = relpatch.default_config()
    c.crop_size = 40
    image = np.random.default_rng(0).integers(0, 256, (50, 50, 3)).astype(np.uint8)
    whole = patch_input.eval_views(c, grid=3, crop_proportion=1.0)["image"](image).numpy()
    resized = tf.image.resize(image[None] / np.float32(255), [40, 40], method="bicubic")[0]
    expected = tf.image.per_image_standardization(tf.clip_by_value(resized, 0.0, 1.0)).numpy()
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    rounded = tf.round(tf.clip_by_value(resized, 0.0, 1.0) * 255) / 255
    assert np.abs(whole - tf.image.per_image_standardization(rounded).numpy()).max() > 1e-3

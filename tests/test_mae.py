"""MAE (selfsup.pretext.mae) against facebookresearch/mae's `models_mae.py`, transcribed to
float64 NumPy here: the sin-cos position embeddings, `patchify`, `random_masking` and
`forward_loss`; the loss over the global batch on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_teacher import first_step, tiny_config

from selfsup.config import ConfigError
from selfsup.pretext import get_task
from selfsup.pretext.mae import (
    patchify,
    random_masking,
    reconstruction_loss,
    sincos_2d,
)


def mae_sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's `get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True)`, its lines."""

    def from_grid_1d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = from_grid_1d(embed_dim // 2, grid[0])
    emb_w = from_grid_1d(embed_dim // 2, grid[1])
    pos_embed = np.concatenate([emb_h, emb_w], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)


def mae_patchify(imgs_nchw: np.ndarray, p: int) -> np.ndarray:
    """MAE's `patchify` of [N, 3, H, W] images."""
    h = w = imgs_nchw.shape[2] // p
    x = imgs_nchw.reshape(imgs_nchw.shape[0], 3, h, p, w, p)
    x = np.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs_nchw.shape[0], h * w, p**2 * 3)


def mae_forward_loss(target, pred, mask, norm_pix_loss=True) -> float:
    """MAE's `forward_loss` after `patchify`, torch's `var` being unbiased."""
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(axis=-1)
    return (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("dim, grid", [(192, 2), (64, 7)])
def test_position_embeddings_are_maes_sin_cos(dim, grid):
    np.testing.assert_allclose(sincos_2d(dim, (grid, grid)), mae_sincos_2d(dim, grid), atol=1e-6)


def test_patches_are_maes_patchify_of_nchw_images():
    images = np.random.default_rng(0).uniform(size=(2, 12, 12, 3)).astype(np.float32)
    expected = mae_patchify(images.transpose(0, 3, 1, 2), 4)
    np.testing.assert_array_equal(patchify(jnp.asarray(images), 4), expected)


def test_masking_removes_exactly_the_ratio_per_example_differently_per_example_and_key():
    kept, mask, restore = random_masking(jax.random.key(0), 64, 16, 0.75)
    mask = np.asarray(mask)
    assert kept.shape == (64, 4) and set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask.sum(axis=1), 12)
    # The kept patches are exactly the unmasked ones, and `restore` inverts the shuffle.
    for row, keep in zip(mask, np.asarray(kept)):
        np.testing.assert_array_equal(np.sort(keep), np.flatnonzero(row == 0))
    assert len({tuple(row) for row in mask}) > 50  # 1820 masks of 16 choose 4 are possible.
    _, other, _ = random_masking(jax.random.key(1), 64, 16, 0.75)
    assert (np.asarray(other) != mask).any(axis=1).mean() > 0.9
    # Every patch is masked as often as the others (expected 48 of 64, sd ~3.5).
    assert np.all(np.abs(mask.sum(axis=0) - 48) < 18)
    shuffled = np.take_along_axis(np.arange(16)[None].repeat(64, 0), np.argsort(restore), 1)
    np.testing.assert_array_equal(np.take_along_axis(shuffled, np.asarray(restore), 1)[0],
                                  np.arange(16))  # fmt: skip


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_is_maes_and_only_over_the_removed_patches(norm_pix):
    rng = np.random.default_rng(1)
    targets, predictions = rng.uniform(size=(2, 3, 8, 12))
    mask = (rng.uniform(size=(3, 8)) < 0.75).astype(np.float64)
    mask[0, 0], mask[0, 1] = 0.0, 1.0
    loss = reconstruction_loss(predictions, targets, mask, norm_pix=norm_pix)
    expected = mae_forward_loss(targets, predictions, mask, norm_pix)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    changed = targets.copy()
    changed[0, 0] += 1.0  # A visible patch.
    assert reconstruction_loss(predictions, changed, mask, norm_pix=norm_pix) == loss
    changed[0, 1] *= 2.0  # A removed one.
    assert reconstruction_loss(predictions, changed, mask, norm_pix=norm_pix) != loss


def test_a_resnet_is_refused_in_one_line():
    config = tiny_config("mae")
    config.model.name = "resnet"
    with pytest.raises(ConfigError, match="MAE masks a ViT's patches.*--config.model.name"):
        get_task(config)


@pytest.mark.slow  # Compiles a ViT-Tiny step on two meshes.
def test_loss_and_gradients_equal_on_1_and_8_devices_and_the_position_embeddings_stay():
    """The loss is one mean over the global batch's removed patches (a mean of per-device means
    would differ: each device holds other counts of them); the encoder's sin-cos position
    embeddings are what the recipe's zero-rate parameter group keeps."""
    one, eight = first_step("mae", 1), first_step("mae", 8)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    flat1, flat8 = jax.tree.leaves(one["grads"]), jax.tree.leaves(eight["grads"])
    assert len(flat1) == len(flat8) > 100
    for a, b in zip(flat1, flat8):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(a).max() + 1e-7)
    before = one["state"].params["encoder"]["pos_embed"]
    grid = tiny_config("mae").model.image_size // tiny_config("mae").model.patch_size
    np.testing.assert_allclose(before[0], sincos_2d(before.shape[-1], (grid, grid)), atol=1e-6)
    assert np.abs(one["grads"]["encoder"]["pos_embed"]).max() > 0
    np.testing.assert_array_equal(one["params"]["encoder"]["pos_embed"], before)
    assert not np.array_equal(one["params"]["encoder"]["cls_token"],
                              one["state"].params["encoder"]["cls_token"])  # fmt: skip

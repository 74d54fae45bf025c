"""MAE (He et al. 2022): a ViT encodes a random 25% of an image's patches; a light decoder
predicts the pixels of the other 75% from them and mask tokens.

Matches facebookresearch/mae `models_mae.py`: per example, noise U[0, 1) per patch, argsort,
the first `(1 - mask_ratio) * L` patches kept (`random_masking`); the encoder (patch embedding,
fixed 2-D sin-cos position embeddings, class token, blocks, norm) runs on the kept patches only;
the decoder embeds its tokens linearly, appends mask tokens, puts every token back in place,
adds its own fixed sin-cos position embeddings, runs its blocks and norm, and predicts each
patch's pixels; the loss is the mean squared error over the removed patches only, against each
patch's pixels normalised by their own mean and (unbiased) variance (`norm_pix_loss`).
Initialisation as its `initialize_weights`: xavier-uniform linear layers and patch embedding
(as a matrix), normal(0.02) class and mask tokens. The encoder's position embeddings are the
ViT's `pos_embed` set to the sin-cos values and kept there by the recipe's parameter group at
learning rate 0 (MAE's `requires_grad=False`); the decoder's are computed, not stored. Views:
a random resized crop (torchvision's sampler) and a flip, nothing else.

On purpose: the pixels are in [0, 1], not standardised by ImageNet's mean and deviation (the
per-patch normalisation of `norm_pix_loss` removes most of that difference); the online probe
reads the class token of the masked forward pass (MAE's encoder never sees a whole image in
training).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_WIDTH, ConfigError, Rule, choice, flag, integer, number
from selfsup.data import augment_jax
from selfsup.data.view_config import CROP_SAMPLERS
from selfsup.models import vit
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import online_probe_head

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.mae`: facebookresearch/mae's ImageNet defaults (`main_pretrain.py`, ViT-B/16's
    `mae_vit_base_patch16_dec512d8b`)."""
    return ml_collections.ConfigDict(
        dict(
            mask_ratio=0.75,
            decoder_dim=512,
            decoder_depth=8,
            decoder_heads=16,
            norm_pix_loss=True,
            min_crop_area=0.2,
            crop_sampler="torchvision",  # `RandomResizedCrop(scale=(0.2, 1.0))`.
        )
    )


def _heads_divide(heads: int, block: ml_collections.ConfigDict, run) -> str | None:
    if block.decoder_dim % heads:
        return f"a divisor of config.mae.decoder_dim={block.decoder_dim}"
    return None


# `config.mae`'s rules (`selfsup.config.check_values`); `min_crop_area` is a shared one.
VALUE_RULES = {
    # At least one patch stays visible and at least one is predicted.
    "mask_ratio": number(0, 1, " (MAE: 0.75)", open_low=True, open_high=True),
    "decoder_dim": MAX_WIDTH,
    "decoder_depth": integer(1, 64),
    "decoder_heads": Rule(integer(1, 1024).test, "an integer in [1, 1024]", _heads_divide),
    "norm_pix_loss": flag(),
    "crop_sampler": choice(*CROP_SAMPLERS),
}


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE's `get_1d_sincos_pos_embed_from_grid`: [len(positions), dim], sines then cosines of
    positions times 1 / 10000^(2i / dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """MAE's `get_2d_sincos_pos_embed(dim, grid, cls_token=True)` for an h x w grid, row by
    row: [1 + h * w, dim] float32, a zero row for the class token first; the first half of each
    row encodes the column (MAE's `meshgrid(grid_w, grid_h)` puts it first), the second the row."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    embed = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), embed]).astype(np.float32)


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[N, H, W, C] -> [N, (H / p) * (W / p), p * p * C], patches row by row, each one's pixels
    in (row, column, channel) order: MAE's `patchify`."""
    n, height, width, channels = images.shape
    h, w = height // patch, width // patch
    x = images.reshape(n, h, patch, w, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * w, patch * patch * channels)


def random_masking(rng: jax.Array, n: int, length: int, mask_ratio: float):
    """MAE's `random_masking` for `n` examples of `length` patches: (indices of the kept patches
    [n, keep], in the order kept; mask [n, length], 1 where removed; each patch's rank in the
    shuffle [n, length], which puts a shuffled sequence back in place)."""
    keep = int(length * (1 - mask_ratio))
    shuffle = jnp.argsort(jax.random.uniform(rng, (n, length)), axis=1)
    restore = jnp.argsort(shuffle, axis=1)
    mask = jnp.take_along_axis(
        jnp.concatenate([jnp.zeros((n, keep)), jnp.ones((n, length - keep))], axis=1),
        restore,
        axis=1,
    )
    return shuffle[:, :keep], mask, restore


def reconstruction_loss(
    predictions: jax.Array, targets: jax.Array, mask: jax.Array, *, norm_pix: bool
) -> jax.Array:
    """MAE's `forward_loss`: the squared error per pixel, averaged per patch, averaged over the
    removed patches (`mask` 1) of the whole batch; targets [N, L, P] normalised per patch by
    their mean and unbiased variance (+ 1e-6) with `norm_pix`."""
    if norm_pix:
        mean = targets.mean(axis=-1, keepdims=True)
        var = targets.var(axis=-1, keepdims=True, ddof=1)
        targets = (targets - mean) / (var + 1.0e-6) ** 0.5
    per_patch = jnp.mean((predictions - targets) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def xavier_uniform(fan_in: int, fan_out: int):
    """torch's `xavier_uniform_` of a [fan_out, fan_in] matrix, for any kernel shape."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -limit, limit
    )


def mae_init(module: nnx.Module, rngs: nnx.Rngs) -> None:
    """MAE's `initialize_weights` over `module`'s linear layers and patch embedding (xavier
    uniform, zero bias; LayerNorms keep ones and zeros)."""
    for _, layer in nnx.iter_modules(module):
        if isinstance(layer, nnx.Linear | nnx.Conv):
            kernel = layer.kernel[...]
            fan_in = int(np.prod(kernel.shape[:-1]))
            init = xavier_uniform(fan_in, kernel.shape[-1])
            layer.kernel[...] = init(rngs.params(), kernel.shape)
            layer.bias[...] = jnp.zeros_like(layer.bias[...])


class Decoder(nnx.Module):
    """MAE's decoder: encoder tokens -> `decoder_dim`, mask tokens in the removed places,
    fixed sin-cos position embeddings, blocks, norm, and each patch's predicted pixels."""

    def __init__(self, width: int, pixels: int, c: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dim = c.decoder_dim
        self.decoder_embed = nnx.Linear(width, dim, rngs=rngs)
        self.mask_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)) * 0.02)
        self.decoder_blocks = nnx.List(
            [vit.Block(dim, c.decoder_heads, 0.0, dtype=jnp.float32, rngs=rngs)
             for _ in range(c.decoder_depth)]
        )  # fmt: skip
        self.decoder_norm = vit.layer_norm(dim, dtype=jnp.float32, rngs=rngs)
        self.decoder_pred = nnx.Linear(dim, pixels, rngs=rngs)

    def __call__(self, tokens: jax.Array, restore: jax.Array, grid: tuple[int, int]) -> jax.Array:
        """tokens [N, 1 + K, width] (class token first) -> predictions [N, L, pixels] for every
        patch, in place (`restore` from `random_masking`)."""
        x = self.decoder_embed(tokens)
        n, length = restore.shape
        masks = jnp.broadcast_to(self.mask_token[...], (n, length + 1 - x.shape[1], x.shape[2]))
        patches = jnp.concatenate([x[:, 1:], masks], axis=1)
        patches = jnp.take_along_axis(patches, restore[..., None], axis=1)
        x = jnp.concatenate([x[:, :1], patches], axis=1) + sincos_2d(x.shape[2], grid)
        for block in self.decoder_blocks:
            x = block(x, drop_path_rng=None)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class MAEModel(nnx.Module):
    """The ViT encoder (what transfers) and the decoder."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        encoder = self.encoder
        self.decoder = Decoder(
            encoder.feature_dim, encoder.patch_size**2 * 3, config.mae, rngs=rngs
        )
        mae_init(self, rngs)
        grid = (encoder.grid, encoder.grid)
        encoder.pos_embed[...] = sincos_2d(encoder.feature_dim, grid)[None]
        encoder.cls_token[...] = jax.random.normal(rngs.params(), encoder.cls_token.shape) * 0.02
        self.online_probe = online_probe_head(encoder.feature_dim, config, rngs=rngs)

    def __call__(self, images: jax.Array, rng: jax.Array, *, mask_ratio: float, train: bool):
        """(predicted pixels [N, L, p * p * 3], mask [N, L], the class token [N, width])."""
        tokens = self.encoder.embed(images)
        n, length, _ = tokens.shape
        kept, mask, restore = random_masking(rng, n, length, mask_ratio)
        visible = jnp.take_along_axis(tokens, kept[..., None], axis=1)
        encoded = self.encoder.encode(visible, train=train)[-1]
        patch = self.encoder.patch_size
        grid = (images.shape[1] // patch, images.shape[2] // patch)
        predictions = self.decoder(encoded.astype(jnp.float32), restore, grid)
        return predictions, mask, encoded[:, 0].astype(jnp.float32)


class MAE:
    """The pretext task: its view (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        if config.model.name not in vit.SIZES:
            raise ConfigError(
                f"MAE masks a ViT's patches, and config.model.name={config.model.name!r}: set "
                f"--config.model.name to one of {sorted(vit.SIZES)}."
            )
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        from selfsup.data import augment

        c = self.config.mae
        view = augment.augmented_view(
            image,
            seed,
            size=self.config.image_size,
            jitter=None,
            blur_p=0.0,
            solarize_p=0.0,
            min_crop_area=c.min_crop_area,
            crop_sampler=c.crop_sampler,
        )
        return {"image": view}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its one view (the mask is drawn in
        the step)."""
        return [example["image"]]

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> MAEModel:
        return MAEModel(self.config, rngs=rngs)

    def loss(
        self, model: MAEModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        c = self.config.mae
        images = batch["image"]
        predictions, mask, features = model(images, rng, mask_ratio=c.mask_ratio, train=train)
        targets = patchify(augment_jax.to_float(images), model.encoder.patch_size)
        loss = reconstruction_loss(predictions, targets, mask, norm_pix=c.norm_pix_loss)
        return loss, {}, features

"""Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of two views' embeddings,
each normalised along the batch, is pulled towards the identity.

Matches facebookresearch/barlowtwins `main.py`: each view goes through the encoder and the
projector as its own batch (8192-8192-8192: Linear, BatchNorm, ReLU twice, then a bias-free
Linear); each embedding is standardised per dimension over the batch (its
`BatchNorm1d(affine=False)` in training mode: biased variance, epsilon 1e-5, where the paper's
pseudo-code writes `std(0)`), `c = z1_norm.T @ z2_norm / N`, and the loss is
`sum_i (1 - c_ii)^2 + lambda sum_{i != j} c_ij^2`. The reference sums `c` over GPUs by
`all_reduce` after dividing by the global batch; here the batch axis of one jitted program
spans every device, so the standardisation and `c` are over the global batch by construction
(tests/test_noncontrastive.py checks 1 against 8 devices). The views are BYOL's asymmetric pair
(`byol.asymmetric_views`), as Barlow Twins' `Transform`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_WIDTH, integer, number
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import ProjectionHead, online_probe_head
from selfsup.pretext import byol

if TYPE_CHECKING:
    import tensorflow as tf


def asymmetric_view_config() -> dict:
    """BYOL's asymmetric views as Barlow Twins' and VICReg's `Transform` make them: blur 1.0 /
    0.1, solarize 0 / 0.2, torchvision's crop sampler and colour jitter (brightness multiplied)."""
    return dict(
        min_crop_area=0.08,
        crop_sampler="torchvision",  # Their `Transform`'s `RandomResizedCrop`.
        blur=(1.0, 0.1),
        solarize=(0.0, 0.2),
        additive_brightness=False,
        color_on_device=False,
    )


def default_config() -> ml_collections.ConfigDict:
    """`config.barlow_twins`: facebookresearch/barlowtwins' ImageNet defaults (`main.py`)."""
    return ml_collections.ConfigDict(
        dict(
            proj_hidden_dim=8192,
            proj_out_dim=8192,
            proj_layers=3,
            lambd=0.0051,  # The off-diagonal terms' weight.
            scale_loss=1.0,  # A factor on the whole loss (solo-learn's CIFAR recipe: 0.1).
            **asymmetric_view_config(),
        )
    )


# `config.barlow_twins`'s rules (`selfsup.config.check_values`); `min_crop_area` is shared.
VALUE_RULES = {
    "proj_hidden_dim": MAX_WIDTH,
    "proj_out_dim": MAX_WIDTH,
    "proj_layers": integer(1, 16, " (Barlow Twins: 3)"),
    "lambd": number(0, 1e3, " (Barlow Twins: 0.0051)"),
    "scale_loss": number(0, 1e3, " (1 = the paper's loss)", open_low=True),
    **byol.VIEW_RULES,
}


def batch_standardize(z: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """`z` [N, D] standardised per dimension over the batch (biased variance), as
    `BatchNorm1d(affine=False)` does in training mode."""
    centred = z - jnp.mean(z, axis=0)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=0) + epsilon)


def off_diagonal_square_sum(c: jax.Array) -> jax.Array:
    """sum_{i != j} c_ij^2 of a square matrix."""
    return jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(jnp.diagonal(c)))


def barlow_twins_loss(
    z1: jax.Array, z2: jax.Array, lambd: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeddings `z1`, `z2` [N, D] of two views of the same N images: (the loss, metrics with
    its on- and off-diagonal terms)."""
    n1, n2 = batch_standardize(z1), batch_standardize(z2)
    # Full fp32 precision: on TPU/GPU the default matmul precision would round to bf16.
    c = jnp.matmul(n1.T, n2, precision=jax.lax.Precision.HIGHEST) / z1.shape[0]
    on_diagonal = jnp.sum(jnp.square(jnp.diagonal(c) - 1))
    off_diagonal = off_diagonal_square_sum(c)
    metrics = {"on_diagonal": on_diagonal, "off_diagonal": off_diagonal}
    return on_diagonal + lambd * off_diagonal, metrics


class TwinsModel(nnx.Module):
    """Encoder and projector (Barlow Twins' and VICReg's "expander") of the task block
    `config[block]`; `encoder` is what transfer evaluators use."""

    def __init__(self, config: ml_collections.ConfigDict, block: str, *, rngs: nnx.Rngs):
        c = config[block]
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        dim = self.encoder.feature_dim
        self.projector = ProjectionHead(
            dim,
            hidden_dim=c.proj_hidden_dim,
            out_dim=c.proj_out_dim,
            num_layers=c.proj_layers,
            out="linear",
            rngs=rngs,
        )
        self.online_probe = online_probe_head(dim, config, rngs=rngs)

    def __call__(self, views: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """views [N, 2, H, W, C] -> (embeddings of view 1 and of view 2, each [N, D], and the
        encoder features of each image, the mean over its two views, [N, F]); each view is its
        own batch, as both references' two forward passes."""
        features = [self.encoder(views[:, v], train=train) for v in range(2)]
        z1, z2 = (self.projector(h, train=train) for h in features)
        return z1, z2, (features[0] + features[1]) / 2


class BarlowTwins:
    """The pretext task: its views (TF side), its model, and its loss."""

    block = "barlow_twins"  # The config block of this task's settings.

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.config.image_size
        return {"views": byol.asymmetric_views(image, seed, self.config[self.block], size=size)}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its two views."""
        return list(example["views"])

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> TwinsModel:
        return TwinsModel(self.config, self.block, rngs=rngs)

    def embed(self, model: TwinsModel, batch, rng: jax.Array, *, train: bool):
        """(z1, z2, features) of the batch's views, coloured in the step if the block says so."""
        views = byol.color_views(batch["views"], rng, self.config[self.block])
        return model(views, train=train)

    def loss(
        self, model: TwinsModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        c = self.config.barlow_twins
        z1, z2, features = self.embed(model, batch, rng, train=train)
        loss, metrics = barlow_twins_loss(z1, z2, c.lambd)
        return c.scale_loss * loss, metrics, features

"""SimCLR (Chen et al. 2020): two crop-and-resize views per image, NT-Xent over the global batch.

Matches google-research/simclr (`tf2/objective.py`, `tf2/model.py`): L2-normalised projections,
positives are the other view of the same image, negatives are all other 2N-2 views of the
*global* batch, and the loss is `mean_i(loss_a_i + loss_b_i)` over both directions. Under
`jax.jit` with a batch-sharded input the similarity matrix spans every device, so the
negatives come from all devices without a hand-written all-gather. Both views go through the
encoder as one batch, so BatchNorm statistics cover the 2N views as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from selfsup.config import MAX_WIDTH, TEMPERATURE, flag, integer, probability
from selfsup.data import augment_jax
from selfsup.data.view_config import COLOR_STRENGTH
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import ProjectionHead, online_probe_head

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.simclr`: google-research/simclr's ImageNet defaults."""
    return ml_collections.ConfigDict(
        dict(
            temperature=0.1,
            proj_hidden_dim=2048,  # simclr's hidden layers keep the encoder's feature width.
            proj_out_dim=128,
            proj_layers=3,
            color_strength=1.0,
            crop=True,
            min_crop_area=0.08,
            flip=True,
            color=True,
            blur=True,
            # BYOL's solarize (x >= 0.5 -> 1 - x) with this probability; SimCLR has none.
            solarize=0.0,
            # Colour jitter, grayscale, blur and solarize in JAX inside the train step (the host
            # then only crops, flips and resizes), as BYOL does to spare the host CPU.
            color_on_device=False,
        )
    )


# `config.simclr`'s rules (`selfsup.config.check_values`); `min_crop_area` is a shared one.
VALUE_RULES = {
    "temperature": TEMPERATURE,
    "proj_hidden_dim": MAX_WIDTH,
    "proj_out_dim": MAX_WIDTH,
    "proj_layers": integer(1, 16, " (SimCLR v1: 2, v2: 3)"),
    "color_strength": COLOR_STRENGTH,
    "crop": flag(),
    "flip": flag(),
    "color": flag(),
    "blur": flag(),
    "solarize": probability(" (0 = SimCLR's recipe, no solarize)"),
    "color_on_device": flag(),
}


def nt_xent_loss(
    z1: jax.Array, z2: jax.Array, temperature: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NT-Xent of projections `z1[i]`, `z2[i]` of two views of image i; returns (loss, metrics)."""
    z1 = z1 / jnp.linalg.norm(z1, axis=-1, keepdims=True).clip(1e-12)
    z2 = z2 / jnp.linalg.norm(z2, axis=-1, keepdims=True).clip(1e-12)
    n = z1.shape[0]

    def similarity(a, b):
        # Full fp32 precision: on TPU/GPU the default matmul precision would round to bf16.
        return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST) / temperature

    self_mask = jnp.eye(n, dtype=bool)  # A view is not its own negative.
    logits_ab, logits_ba = similarity(z1, z2), similarity(z2, z1)
    logits_aa = jnp.where(self_mask, -jnp.inf, similarity(z1, z1))
    logits_bb = jnp.where(self_mask, -jnp.inf, similarity(z2, z2))
    labels = jnp.arange(n)
    loss_a = optax.softmax_cross_entropy_with_integer_labels(
        jnp.concatenate([logits_ab, logits_aa], axis=1), labels
    )
    loss_b = optax.softmax_cross_entropy_with_integer_labels(
        jnp.concatenate([logits_ba, logits_bb], axis=1), labels
    )
    accuracy = jnp.mean(jnp.argmax(logits_ab, axis=1) == labels)
    return jnp.mean(loss_a + loss_b), {"contrast_accuracy": accuracy}


class SimCLRModel(nnx.Module):
    """ResNet encoder plus projection head; `encoder` is what transfer evaluators use."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        model, simclr = config.model, config.simclr
        self.encoder = encoder_from_config(model, rngs=rngs)
        self.projection = ProjectionHead(
            self.encoder.feature_dim,
            hidden_dim=simclr.proj_hidden_dim,
            out_dim=simclr.proj_out_dim,
            num_layers=simclr.proj_layers,
            rngs=rngs,
        )
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)

    def __call__(self, views: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """views [N, 2, H, W, C] -> projections of view 1 and view 2, each [N, D], and the
        encoder features of each image (mean over its two views) [N, F]."""
        n = views.shape[0]
        # [N, 2] -> [2N] keeps each device's rows local (no resharding of the batch axis).
        h = self.encoder(views.reshape((2 * n, *views.shape[2:])), train=train)
        z = self.projection(h, train=train).reshape((n, 2, -1))
        return z[:, 0], z[:, 1], h.reshape((n, 2, -1)).mean(axis=1)


class SimCLR:
    """The pretext task: its training example (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        from selfsup.data import augment

        c = self.config.simclr
        on_host = not c.color_on_device  # Else `loss` applies the colour ops on the device.
        views = augment.two_views(
            image,
            seed,
            size=self.config.image_size,
            color_strength=c.color_strength,
            crop=c.crop,
            min_crop_area=c.min_crop_area,
            flip=c.flip,
            color=c.color and on_host,
            blur=c.blur and on_host,
            solarize_p=c.solarize if on_host else 0.0,
        )
        return {"views": views}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its two views."""
        return list(example["views"])

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> SimCLRModel:
        return SimCLRModel(self.config, rngs=rngs)

    def loss(
        self, model: SimCLRModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        c = self.config.simclr
        views = batch["views"]
        if c.color_on_device:
            # `rng` is the step's key (seed folded with the step), so a resumed run draws the
            # same colours. Held-out steps get the seed's key: the same colours at every
            # evaluation, as the host's held-out stream repeats its augmentations.
            views = augment_jax.color_augment_views(
                views,
                rng,
                strength=c.color_strength,
                color=c.color,
                blur=c.blur,
                solarize_p=c.solarize,
            )
        z1, z2, features = model(views, train=train)
        return *nt_xent_loss(z1, z2, self.config.simclr.temperature), features

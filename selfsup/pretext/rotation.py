"""Rotation prediction (Gidaris, Singh, Komodakis 2018): by how many quarter turns was the image
rotated?

As Gidaris and Revisiting-SSL (google/revisiting-self-supervised, `self_supervision/rotation.py`
and the `rotate` preprocessing) train it: every image of the batch appears in all four rotations
(0, 90, 180, 270 degrees counter-clockwise, labels 0-3), so the encoder sees 4N images, and a
linear layer on the encoder's features classifies the rotation. The view that is rotated is
`selfsup.data.views.training_view` (`config.rotation`: crop, flip, colour).
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

from selfsup.data.view_config import VIEW_RULES, view_config
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import online_probe_head

TURNS = 4

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.rotation`: Revisiting-SSL's view (`inception_preprocess`)."""
    return view_config()


VALUE_RULES = VIEW_RULES  # `config.rotation`'s rules (`selfsup.config.check_values`).


class RotationModel(nnx.Module):
    """The encoder (what transfers) and a linear 4-way rotation classifier on its features."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        self.head = nnx.Linear(self.encoder.feature_dim, TURNS, rngs=rngs)
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)


def rotation_loss(logits: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """logits [N, 4, 4] of each image's four rotations -> mean cross-entropy (label k for
    rotation k) and accuracy."""
    labels = jnp.broadcast_to(jnp.arange(TURNS), logits.shape[:-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"pretext_accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels)}


class Rotation:
    """The pretext task: its training example (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """`rotations` [4, s, s, 3]: one view of the image, turned by k quarter turns at k."""
        from selfsup.data import views

        view = views.training_view(image, seed, self.config.rotation, size=self.config.image_size)
        return {"rotations": views.quarter_turns(view)}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The four rotations side by side, labels 0-3 from left to right."""
        return list(example["rotations"])

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`), upright."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> RotationModel:
        return RotationModel(self.config, rngs=rngs)

    def loss(
        self, model: RotationModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        """The online probe gets the features of the upright image, which evaluation feeds."""
        rotations = batch["rotations"]
        n = rotations.shape[0]
        # [N, 4] -> [4N] keeps each device's rows local, like SimCLR's two views.
        features = model.encoder(rotations.reshape((n * TURNS, *rotations.shape[2:])), train=train)
        logits = model.head(features).reshape((n, TURNS, TURNS))
        return *rotation_loss(logits), features.reshape((n, TURNS, -1))[:, 0]

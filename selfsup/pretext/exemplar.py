"""Exemplar (Dosovitskiy et al. 2014), as Revisiting-SSL trains it with a triplet loss
(google/revisiting-self-supervised, `self_supervision/exemplar.py`): every image of the batch
appears as `copies` augmented copies; the encoder's features go through a linear layer
(`embed_dim`), and a semi-hard triplet loss with margin `margin` pulls the copies of an image
together and pushes the other images' copies away.

The copies follow Revisiting's preprocessing `to_gray,crop_inception_preprocess_patches,
standardization`: the image turns grey (mean of RGB) with probability `grayscale_probability`
(all copies alike), each copy is a `selfsup.data.views.training_view` (Inception crop, flip,
colour), then standardised on its own. The loss is `triplet_semihard_loss` of TF 1's
`tf.contrib.losses.metric_learning` on squared Euclidean distances, with one quirk of
Revisiting's code kept: the embeddings are L2-normalised along the batch axis
(`tf.nn.l2_normalize(logits, axis=0)`: each embedding dimension has unit norm over the global
batch), not per embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_WIDTH, integer, number, probability
from selfsup.data.view_config import VIEW_RULES, view_config
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import online_probe_head

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.exemplar`: Revisiting-SSL's ResNet-50 ImageNet recipe."""
    return view_config(
        copies=8,  # Revisiting's `num_of_inception_patches`.
        margin=0.5,
        embed_dim=1000,
        grayscale_probability=0.66,
    )


# `config.exemplar`'s rules (`selfsup.config.check_values`).
VALUE_RULES = VIEW_RULES | {
    "copies": integer(
        2, 64, " (a copy needs a positive, and each is one more image per image; Revisiting: 8)"
    ),
    # At 0 or below every triplet's hinge is already 0: nothing to learn.
    "margin": number(0, 10, " (Revisiting: 0.5)", open_low=True),
    "embed_dim": MAX_WIDTH,
    "grayscale_probability": probability(),
}


def pairwise_squared_distances(x: jax.Array) -> jax.Array:
    """[B, D] -> [B, B] squared Euclidean distances, as TF's `pairwise_distance(squared=True)`:
    from the Gram matrix, negatives clipped to 0, the diagonal exactly 0."""
    squares = jnp.sum(x * x, axis=1)
    # Full fp32 precision: on TPU/GPU the default matmul precision would round to bf16.
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.maximum(squares[:, None] + squares[None, :] - 2.0 * gram, 0.0)
    return jnp.where(jnp.eye(len(x), dtype=bool), 0.0, d)


def triplet_semihard_loss(labels: jax.Array, embeddings: jax.Array, margin: float) -> jax.Array:
    """TF 1's `triplet_semihard_loss` (FaceNet's semi-hard mining) over every (anchor a,
    positive p) pair of equal labels, a != p: the negative is the nearest one farther from a
    than p is, or, if none is, the farthest one; the loss is the mean of max(margin + d(a, p) -
    d(a, n), 0) over the pairs, on squared distances.

    The nearest farther negative comes from each anchor's sorted negative distances
    (`searchsorted`), so memory stays [B, B] where TF's formulation tiles [B * B, B]."""
    d = pairwise_squared_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    negative_d = jnp.sort(jnp.where(same, jnp.inf, d), axis=1)  # Negatives first, ascending.
    count = jnp.sum(~same, axis=1, keepdims=True)
    # Index of the first negative strictly farther than each positive (TF: d_an > d_ap).
    first = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="right"))(negative_d, d)
    farther = jnp.take_along_axis(negative_d, jnp.minimum(first, d.shape[1] - 1), axis=1)
    farthest = jnp.take_along_axis(negative_d, count - 1, axis=1)
    chosen = jnp.where(first < count, farther, farthest)
    positive = same & ~jnp.eye(len(labels), dtype=bool)
    hinge = jnp.where(positive, jnp.maximum(margin + d - chosen, 0.0), 0.0)
    return hinge.sum() / positive.sum()


def exemplar_loss(embeddings: jax.Array, margin: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """embeddings [N, C, D] of C copies of N images -> (triplet loss, metrics):
    `pretext_accuracy` is the share of copies whose nearest other copy (the loss's distance)
    is of the same image."""
    n, c = embeddings.shape[:2]
    z = embeddings.reshape((n * c, -1))
    # Revisiting's tf.nn.l2_normalize(logits, axis=0): over the batch, per dimension.
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=0, keepdims=True), 1e-12))
    labels = jnp.repeat(jnp.arange(n), c)
    loss = triplet_semihard_loss(labels, z, margin)
    d = jnp.where(jnp.eye(n * c, dtype=bool), jnp.inf, pairwise_squared_distances(z))
    accuracy = jnp.mean(labels[jnp.argmin(d, axis=1)] == labels)
    return loss, {"pretext_accuracy": accuracy}


class ExemplarModel(nnx.Module):
    """The encoder (what transfers) and a linear embedding of its features."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        self.embed = nnx.Linear(self.encoder.feature_dim, config.exemplar.embed_dim, rngs=rngs)
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)

    def __call__(self, copies: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """copies [N, C, H, W, 3] -> embeddings [N, C, D] and the encoder features of each
        image (mean over its copies) [N, F]."""
        n, c = copies.shape[:2]
        # [N, C] -> [CN] keeps each device's rows local, like SimCLR's two views.
        h = self.encoder(copies.reshape((n * c, *copies.shape[2:])), train=train)
        return self.embed(h).reshape((n, c, -1)), h.reshape((n, c, -1)).mean(axis=1)


class Exemplar:
    """The pretext task: its training example (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """`copies` [C, s, s, 3], each standardised."""
        import tensorflow as tf

        from selfsup.data import augment, patches, views

        c = self.config.exemplar
        gray_seed, copies_seed = augment.split_seed(seed, 2)
        image = augment.apply_with_probability(
            patches.grayscale_mean, c.grayscale_probability, gray_seed, augment.to_float(image)
        )
        copies = tf.stack(
            [
                views.training_view(image, s, c, size=self.config.image_size)
                for s in augment.split_seed(copies_seed, c.copies)
            ]
        )
        return {"copies": tf.map_fn(tf.image.per_image_standardization, copies)}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The copies, each rescaled from its standardised values."""
        from selfsup.data import patches

        return list(patches.rescaled(example["copies"]))

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`), standardised as the copies are."""
        import tensorflow as tf

        from selfsup.data import augment

        size = self.config.image_size

        def image_view(image: tf.Tensor) -> tf.Tensor:
            # From the float image: the view stays float (unrounded) for the standardisation.
            view = augment.eval_view(
                augment.to_float(image), size=size, crop_proportion=crop_proportion
            )
            return tf.ensure_shape(tf.image.per_image_standardization(view), [size, size, 3])

        return {"image": image_view}

    def build_model(self, rngs: nnx.Rngs) -> ExemplarModel:
        return ExemplarModel(self.config, rngs=rngs)

    def loss(
        self, model: ExemplarModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        embeddings, features = model(batch["copies"], train=train)
        return *exemplar_loss(embeddings, self.config.exemplar.margin), features

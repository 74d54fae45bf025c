"""Relative patch position (Doersch, Gupta, Efros 2015): which of the 8 neighbouring cells of a 3x3
grid does a patch come from, given the centre patch?

Follows the ResNet recipe of Kolesnikov, Zhai, Beyer 2019 (google/revisiting-self-supervised):
the 9 jittered, standardised patches of `selfsup.data.patches` are embedded by a shared
encoder; all 8 pairs (neighbour, centre) of an image are classified, the label being the
neighbour's position (0-7 = grid positions 0, 1, 2, 3, 5, 6, 7, 8 in row-major order), with
the two embeddings concatenated in that order as in Revisiting's `generate_patch_locations`.
Doersch used a gap between patches (`min_gap`); Revisiting relies on the jitter alone
(`min_gap=0`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from selfsup.config import MAX_WIDTH, Rule, choice, integer, number, probability
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import PatchPairHead, online_probe_head

GRID = 3
CENTRE = GRID * GRID // 2
NEIGHBOURS = tuple(i for i in range(GRID * GRID) if i != CENTRE)  # Label i = NEIGHBOURS[i].
CHROMATIC_REMEDIES = ("none", "color_drop", "project")

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.relpatch`: Revisiting-SSL's ResNet-50 ImageNet recipe."""
    return ml_collections.ConfigDict(
        dict(
            resize_size=292,
            crop_size=255,  # 3 x 85 px cells.
            patch_size=64,  # 85 - patch_jitter 21.
            min_gap=0,  # Revisiting relies on the jitter alone; Doersch used a gap.
            # Evaluation (`patches.eval_patches`): Revisiting's `--smaller_size`, then the
            # central 3 x patch_size crop in adjacent tiles.
            eval_smaller_size=224,
            grayscale_probability=0.66,
            chromatic="none",  # Or Doersch's "color_drop" / "project" (green-magenta).
            embed_dim=1000,  # Revisiting embeds each patch with the 1000-way final layer.
            fusion_hidden_dim=4096,
            dropout=0.5,
        )
    )


def _crop_fits(crop_size: int, c: ml_collections.ConfigDict, run) -> str | None:
    """What `crop_size` must be for the block `c`'s grid, or None if it is."""
    if crop_size > c.resize_size:
        return f"at most resize_size={c.resize_size} (or raise resize_size to {crop_size})"
    needed = GRID * (c.patch_size + 2 * math.ceil(c.min_gap / 2))
    if needed <= GRID * (crop_size // GRID):
        return None
    return (
        f"at least {needed}, which a {GRID}x{GRID} grid of {c.patch_size} px patches at least "
        f"{c.min_gap} px apart needs ({crop_size} gives {crop_size // GRID} px cells; raise "
        "resize_size with it, or lower patch_size / min_gap)"
    )


def _eval_fits(smaller_size: int, c: ml_collections.ConfigDict, run) -> str | None:
    """What `eval_smaller_size` must be: room for the evaluation tiles, or None if it is."""
    if smaller_size >= GRID * c.patch_size:
        return None
    return f"at least {GRID} x patch_size = {GRID * c.patch_size} (the evaluation tiles' crop)"


SIZE = integer(1, 4096, " (pixels)")
# The rules of the patch geometry and head that relative patch position and jigsaw share
# (`selfsup.config.check_values`).
PATCH_RULES = {
    "resize_size": SIZE,
    "crop_size": Rule(SIZE.test, SIZE.requirement, _crop_fits),
    "patch_size": SIZE,
    "eval_smaller_size": Rule(SIZE.test, SIZE.requirement + " (Revisiting: 224)", _eval_fits),
    "min_gap": integer(0, 4096, " (pixels)"),
    "grayscale_probability": probability(),
    "chromatic": choice(*CHROMATIC_REMEDIES),
    "embed_dim": MAX_WIDTH,
    "fusion_hidden_dim": MAX_WIDTH,
    # At 1 dropout zeroes every unit.
    "dropout": number(0, 1, " (Revisiting: 0.5)", open_high=True),
}
VALUE_RULES = PATCH_RULES  # `config.relpatch`'s.


class RelPatchModel(nnx.Module):
    """Shared encoder -> embedding per patch; fusion head on (neighbour, centre) pairs."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        model, c = config.model, config.relpatch
        self.encoder = encoder_from_config(model, rngs=rngs)
        # Revisiting embeds each patch with the network's final 1000-way layer (`embed_dim`).
        self.embed = nnx.Linear(self.encoder.feature_dim, c.embed_dim, rngs=rngs)
        self.head = PatchPairHead(
            2 * c.embed_dim,
            hidden_dim=c.fusion_hidden_dim,
            num_classes=len(NEIGHBOURS),
            dropout=c.dropout,
            rngs=rngs,
        )
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)

    def __call__(
        self, patches: jax.Array, *, train: bool, dropout_rng: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """patches [N, 9, h, w, C] -> logits [N, 8, 8] for the pairs (NEIGHBOURS[i], centre),
        and the encoder features of each image (mean over its 9 patches) [N, F]."""
        n, p = patches.shape[:2]
        # [N, 9] -> [9N] keeps each device's rows local, like SimCLR's two views.
        x = self.encoder(patches.reshape((n * p, *patches.shape[2:])), train=train)
        pairs = pair_embeddings(self.embed(x).reshape((n, p, -1)))
        logits = self.head(pairs, train=train, dropout_rng=dropout_rng)
        return logits, x.reshape((n, p, -1)).mean(axis=1)


def pair_embeddings(e: jax.Array) -> jax.Array:
    """[N, 9, D] patch embeddings -> [N, 8, 2D]: pair i is (NEIGHBOURS[i], centre), concatenated."""
    centre = jnp.broadcast_to(e[:, CENTRE : CENTRE + 1], (e.shape[0], len(NEIGHBOURS), e.shape[2]))
    return jnp.concatenate([e[:, NEIGHBOURS, :], centre], axis=-1)


def relpatch_loss(logits: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean 8-way cross-entropy over every (image, pair); label i for pair i."""
    labels = jnp.broadcast_to(jnp.arange(len(NEIGHBOURS)), logits.shape[:-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"pretext_accuracy": accuracy}


class RelativePatchPosition:
    """The pretext task: its training example (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        from selfsup.data import patches

        return {"patches": patches.patch_example(image, seed, self.config.relpatch, grid=GRID)}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its 9 patches in their 3x3 grid."""
        from selfsup.data import patches

        return [patches.grid_mosaic(example["patches"], grid=GRID)]

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image` (whole, standardised) and `patches` (the 9 evaluation patches): see
        `patches.eval_views`."""
        from selfsup.data import patches

        return patches.eval_views(self.config.relpatch, grid=GRID, crop_proportion=crop_proportion)

    def build_model(self, rngs: nnx.Rngs) -> RelPatchModel:
        return RelPatchModel(self.config, rngs=rngs)

    def loss(
        self, model: RelPatchModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        logits, features = model(batch["patches"], train=train, dropout_rng=rng if train else None)
        return *relpatch_loss(logits), features

"""Jigsaw puzzles (Noroozi & Favaro 2016): which permutation of a fixed set shuffled the 3x3 grid
of an image's patches?

Follows the ResNet recipe of Revisiting-SSL (google/revisiting-self-supervised,
`self_supervision/jigsaw.py`, `patch_utils.py`): the 9 jittered, standardised patches of
`selfsup.data.patches` (the geometry relative patch position uses) are embedded by the shared
encoder and its final linear layer (`embed_dim`); for each of `perms_per_image` permutations the
9 embeddings are concatenated in the permutation's order (position j holds cell `perm[j]`, as
Revisiting's `permutate_and_concat_image_patches` gathers them) and a fusion head (Dense, BN,
ReLU, dropout, Dense) classifies the permutation's index. Shuffling embeddings equals embedding
shuffled patches (the encoder sees each patch alone, and BatchNorm the same set), so 9 encoder
passes serve every permutation of an image. Revisiting draws one subset of 8 permutations per
batch for all its images; here each image draws its own 8 (distinct), which keeps examples
independent in the per-example input pipeline.

The permutation set is by default the published one (`permutations="noroozi"`): Noroozi's
`permutations_100_max.bin` (MehdiNoroozi/JigsawPuzzleSolver), which Revisiting's README
downloads, shipped here as `jigsaw_permutations_100_max.txt` (0-based; the file stores them
1-based). Revisiting reads it as `load_permutations` does (minus 1) and numbers the cells
row-major (`image_to_patches`), as here, so the set is Revisiting's exactly; Noroozi's Caffe
layer numbers them column-major (`data_transformer.cpp`: cell k at x = k // 3, y = k % 3), so
Noroozi's own puzzles are these on the transposed grid (the same Hamming distances).
`permutations="greedy"` makes a set of any size, deterministic from `permutation_seed`: start
from a random permutation of the 9! and repeatedly add the one whose minimum Hamming distance
to the chosen set is largest, ties going to the largest summed distance (Noroozi's Algorithm 1
maximises the sum alone; the minimum first makes the set's smallest distance a guarantee), then
the lowest index.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from selfsup.config import Rule, choice, integer
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import PatchPairHead, online_probe_head
from selfsup.pretext.relpatch import PATCH_RULES

GRID = 3
CELLS = GRID * GRID
PUBLISHED = Path(__file__).with_name("jigsaw_permutations_100_max.txt")
PERMUTATION_SETS = ("noroozi", "greedy")

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.jigsaw`: Revisiting-SSL's ResNet-50 ImageNet recipe (relative patch position's
    geometry), its 100 permutations and 8 permutations per image."""
    return ml_collections.ConfigDict(
        dict(
            resize_size=292,
            crop_size=255,  # 3 x 85 px cells.
            patch_size=64,  # 85 - patch_jitter 21.
            min_gap=0,
            eval_smaller_size=224,  # Revisiting's evaluation, as relative patch's.
            grayscale_probability=0.66,
            chromatic="none",  # Or Doersch's "color_drop" / "project", as relative patch.
            # Revisiting's `permutations_100_max` (module docstring); any two differ in at
            # least 2 of the 9 positions. "greedy": ours, of any size from `permutation_seed`;
            # with seed 0, any two of 100 differ in at least 6 positions, of 1000 in at least 5.
            permutations="noroozi",
            num_permutations=100,
            permutation_seed=0,
            perms_per_image=8,  # Revisiting's `perm_subset_size`.
            embed_dim=1000,
            fusion_hidden_dim=4096,
            dropout=0.5,
        )
    )


def _published_size(count: int, c: ml_collections.ConfigDict, run) -> str | None:
    if c.permutations == "greedy" or count == 100:
        return None
    return "100 with permutations='noroozi' (the published set; 'greedy' makes any size)"


def _within_set(perms_per_image: int, c: ml_collections.ConfigDict, run) -> str | None:
    if perms_per_image <= c.num_permutations:
        return None
    return f"at most num_permutations={c.num_permutations} (Revisiting: 8)"


# `config.jigsaw`'s rules (`selfsup.config.check_values`).
VALUE_RULES = PATCH_RULES | {
    "permutations": choice(*PERMUTATION_SETS),
    "num_permutations": Rule(
        integer(2, 1000).test,
        "an integer in [2, 1000] (Revisiting: 100, Noroozi's most: 1000; choosing each of a"
        " greedy set scans all 9! orders)",
        _published_size,
    ),
    "permutation_seed": integer(0, 2**32 - 1),
    "perms_per_image": Rule(integer(1, 1000).test, "an integer in [1, 1000]", _within_set),
}


def published_permutations() -> np.ndarray:
    """[100, 9] int32, read-only: Noroozi's `permutations_100_max` (module docstring)."""
    perms = np.loadtxt(PUBLISHED, dtype=np.int32, ndmin=2)
    perms.flags.writeable = False
    return perms


def permutations(c: ml_collections.ConfigDict) -> np.ndarray:
    """`config.jigsaw`'s permutation set, [num_permutations, 9] int32."""
    if c.permutations == "noroozi":
        return published_permutations()
    return permutation_set(c.num_permutations, c.permutation_seed)


@functools.cache
def permutation_set(count: int, seed: int) -> np.ndarray:
    """[count, 9] int32, read-only: `count` permutations of the 9 cells chosen greedily for
    maximal minimum Hamming distance (module docstring), the first drawn from `seed`. The first
    k of a set are the set of k for the same seed."""
    cols = np.array(list(itertools.permutations(range(CELLS))), np.int8).T.copy()  # [9, 9!]
    chosen = [int(np.random.default_rng(seed).integers(cols.shape[1]))]
    nearest = np.full(cols.shape[1], CELLS, np.int64)  # Min distance to the chosen set.
    total = np.zeros(cols.shape[1], np.int64)  # Summed distance to it, < CELLS * count.
    same = np.empty(cols.shape[1], bool)
    for _ in range(count - 1):
        newest = cols[:, chosen[-1]]
        matches = np.zeros(cols.shape[1], np.int8)
        for cell in range(CELLS):  # Column by column: far faster than comparing rows.
            np.equal(cols[cell], newest[cell], out=same)
            matches += same
        distance = CELLS - matches.astype(np.int64)
        np.minimum(nearest, distance, out=nearest)
        total += distance
        score = nearest * (CELLS * count) + total  # The minimum first, the sum breaks ties.
        score[chosen] = -1
        chosen.append(int(np.argmax(score)))
    perms = cols[:, chosen].T.astype(np.int32)
    perms.flags.writeable = False
    return perms


def shuffle(items: jax.Array, order: jax.Array) -> jax.Array:
    """items [N, 9, ...] in grid order, order [N, K, 9] -> [N, K, 9, ...]: shuffle k of image n
    holds `items[n, order[n, k, j]]` at position j."""
    return jax.vmap(lambda x, o: x[o])(items, order)


class JigsawModel(nnx.Module):
    """Shared encoder -> embedding per patch; a fusion head on the 9 concatenated embeddings."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        c = config.jigsaw
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        self.embed = nnx.Linear(self.encoder.feature_dim, c.embed_dim, rngs=rngs)
        self.head = PatchPairHead(
            CELLS * c.embed_dim,
            hidden_dim=c.fusion_hidden_dim,
            num_classes=c.num_permutations,
            dropout=c.dropout,
            rngs=rngs,
        )
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)

    def __call__(
        self,
        patches: jax.Array,
        order: jax.Array,
        *,
        train: bool,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """patches [N, 9, h, w, C] in grid order, `order` [N, K, 9] (see `shuffle`) -> logits
        [N, K, num_permutations] and the encoder features of each image (mean over its 9
        patches) [N, F]."""
        n, p = patches.shape[:2]
        # [N, 9] -> [9N] keeps each device's rows local, like SimCLR's two views.
        x = self.encoder(patches.reshape((n * p, *patches.shape[2:])), train=train)
        shuffled = shuffle(self.embed(x).reshape((n, p, -1)), order)
        logits = self.head(
            shuffled.reshape((*order.shape[:2], -1)), train=train, dropout_rng=dropout_rng
        )
        return logits, x.reshape((n, p, -1)).mean(axis=1)


def jigsaw_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of the permutation indices `labels` [N, K] and accuracy."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"pretext_accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels)}


class Jigsaw:
    """The pretext task: its training example (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.permutations = permutations(config.jigsaw)

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """`patches` [9, p, p, 3] in grid order and `permutation` [K]: K distinct permutation
        indices, uniformly drawn."""
        import tensorflow as tf

        from selfsup.data import augment, patches

        c = self.config.jigsaw
        patch_seed, permutation_seed = augment.split_seed(seed, 2)
        draws = tf.random.stateless_uniform([c.num_permutations], permutation_seed)
        return {
            "patches": patches.patch_example(image, patch_seed, c, grid=GRID),
            "permutation": tf.math.top_k(draws, k=c.perms_per_image).indices,
        }

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The grid as the head sees it under the example's first permutation, then the patches
        in their own cells (what the permutation index encodes)."""
        from selfsup.data import patches

        order = self.permutations[example["permutation"][0]]
        grid = example["patches"]
        return [patches.grid_mosaic(grid[order], grid=GRID), patches.grid_mosaic(grid, grid=GRID)]

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image` (whole, standardised) and `patches` (the 9 evaluation patches): see
        `patches.eval_views`."""
        from selfsup.data import patches

        return patches.eval_views(self.config.jigsaw, grid=GRID, crop_proportion=crop_proportion)

    def build_model(self, rngs: nnx.Rngs) -> JigsawModel:
        return JigsawModel(self.config, rngs=rngs)

    def loss(
        self, model: JigsawModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        labels = batch["permutation"]
        order = jnp.asarray(self.permutations)[labels]
        logits, features = model(
            batch["patches"], order, train=train, dropout_rng=rng if train else None
        )
        return *jigsaw_loss(logits, labels), features

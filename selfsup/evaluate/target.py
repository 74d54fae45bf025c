"""The target task every transfer evaluator of a run shares: data, label splits, preprocessing,
and each encoder's frozen features, extracted once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import tensorflow as tf
from flax import nnx

from selfsup.data import pipeline
from selfsup.data.sources import Source
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.resume import SavedWork
from selfsup.evaluate.subsets import LabelSplits, subset_source


@dataclasses.dataclass
class Target:
    """The target task every evaluator of a run shares: data, splits, preprocessing, and the
    frozen features of each encoder (extracted once, on first use)."""

    source: Source
    train_split: str
    eval_split: str
    splits: LabelSplits
    mesh: jax.sharding.Mesh
    local_batch: int
    feature_input: Callable[[tf.Tensor], tf.Tensor]  # What frozen evaluators feed the encoder.
    image_input: Callable[[tf.Tensor], tf.Tensor]  # A whole image, as fine-tuning feeds it.
    # A fine-tuning crop, already a square view: prepared as an evaluation image, not cropped again.
    crop_input: Callable[[tf.Tensor], tf.Tensor]
    layers: tuple[str, ...]  # The depths frozen evaluators probe.
    saved: SavedWork  # Features, rows and checkpoints kept for a resume.
    _features: dict[str, dict[str, tuple[np.ndarray, ...]]] = dataclasses.field(
        default_factory=dict
    )

    def eval_dataset(
        self, source: Source, split: str, preprocess: Callable[[tf.Tensor], tf.Tensor]
    ) -> tf.data.Dataset:
        return pipeline.eval_dataset(
            source,
            split,
            preprocess,
            local_batch_size=self.local_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def minival_source(self) -> Source:
        return subset_source(self.source, self.train_split, self.splits.minival, name="minival")

    def frozen_features(self, name: str, encoder: nnx.Module, layer: str) -> tuple[np.ndarray, ...]:
        """(train_x, train_y, test_x, test_y) of encoder `name` at depth `layer`; train rows in
        split order. Every layer's features come from one pass over each split."""
        if name not in self._features:
            arrays = self.saved.arrays(f"features {name}", lambda: self._extract(encoder))
            self._features[name] = {
                layer: (arrays[f"train.{layer}"], arrays["train"], arrays[f"test.{layer}"],
                        arrays["test"])
                for layer in self.layers
            }  # fmt: skip
        return self._features[name][layer]

    def _extract(self, encoder: nnx.Module) -> dict[str, np.ndarray]:
        """{"train.<layer>": features, "train": labels, and the same for "test"}."""
        arrays = {}
        for part, split in (("train", self.train_split), ("test", self.eval_split)):
            features, arrays[part] = extract_features(
                encoder,
                self.eval_dataset(self.source, split, self.feature_input),
                self.mesh,
                what=f"{self.source.spec} split {split!r}",
                total=self.source.num_examples(split),
                layers=self.layers,
            )
            arrays |= {f"{part}.{layer}": x for layer, x in features.items()}
        return arrays

"""Pretext tasks: each is one module whose task class meets `PretextTask`, plus one line in
`TASKS`. The trainer, checkpoints, held-out metrics, the online probe, `show-augmentations` and
every evaluator use a task only through this contract.

The host-side methods (`train_example`, `eval_views`, `display_views`) run in tf.data and
import TensorFlow where they run, so a task's model and loss (and everything that trains them)
import and run without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

# config.task -> "module:class" in this package.
TASKS = {
    "simclr": "simclr:SimCLR",
    "relpatch": "relpatch:RelativePatchPosition",
    "rotation": "rotation:Rotation",
    "jigsaw": "jigsaw:Jigsaw",
    "exemplar": "exemplar:Exemplar",
}


@runtime_checkable
class PretextTask(Protocol):
    """What a pretext task gives the rest of the codebase. `__init__(config)` takes the whole
    config (its own block, e.g. `config.simclr`, included) and raises ConfigError on values it
    cannot use."""

    config: ml_collections.ConfigDict

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """One training example (tf.data, per image) from a uint8 [h, w, 3] image and this
        example's stateless seed; its arrays become the batch `loss` gets."""

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """The named inputs transfer evaluators may feed the encoder (`config.features` picks
        one): each maps a uint8 image to one [h, w, 3] input, or to [P, h, w, 3] inputs whose
        features are averaged. "image", the whole image, is always one of them (fine-tuning
        feeds it); `crop_proportion` is the evaluation's central crop."""

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`, as [h, w, 3] pictures in [0, 1], for
        `show-augmentations`."""

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The pretext model: an NNX module with an `encoder` (what transfers; a ResNet) and an
        `online_probe` (a linear head, or None with `online_probe_classes=0`)."""

    def loss(
        self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        """Inside the jitted, sharded step: (scalar loss, metrics, encoder features [N, F] of
        each image, which the online probe classifies). `rng` is the step's key."""


def get_task(config: ml_collections.ConfigDict) -> PretextTask:
    """The task `config.task` names, built from `config`."""
    if config.task not in TASKS:
        raise ConfigError(f"unknown config.task={config.task!r}: use one of {sorted(TASKS)}.")
    module, name = TASKS[config.task].split(":")
    return getattr(importlib.import_module(f"selfsup.pretext.{module}"), name)(config)

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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import ConfigError, Rule, check_values, owner_rules
from selfsup.models import encoders

if TYPE_CHECKING:
    import tensorflow as tf

# config.task -> "module:class" in this package.
TASKS = {
    "simclr": "simclr:SimCLR",
    "relpatch": "relpatch:RelativePatchPosition",
    "byol": "byol:BYOL",
    "moco": "moco:MoCo",
    "rotation": "rotation:Rotation",
    "jigsaw": "jigsaw:Jigsaw",
    "exemplar": "exemplar:Exemplar",
    "simsiam": "simsiam:SimSiam",
    "barlow_twins": "barlow_twins:BarlowTwins",
    "vicreg": "vicreg:VICReg",
    "mae": "mae:MAE",
    "dino": "dino:DINO",
    "swav": "swav:SwAV",
}


def value_rules(config: ml_collections.ConfigDict) -> dict[str, Rule]:
    """The rules of `config.task`, of the encoder (`config.model`) and of every task block the
    config has (each task's `VALUE_RULES`, beside its `default_config()`)."""
    names = tuple(TASKS)
    return {
        "task": Rule(lambda v: v in names, f"one of {sorted(names)}"),
        **{f"model.{key}": rule for key, rule in encoders.VALUE_RULES.items()},
        **owner_rules(config, TASKS, __name__),
    }


@runtime_checkable
class PretextTask(Protocol):
    """What a pretext task gives the rest of the codebase. `__init__(config)` takes the whole
    config (its own block, e.g. `config.simclr`, included), whose values `get_task` checked."""

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
        """What the network sees of one `train_example`, as [h, w, 3] pictures (uint8, or float
        in [0, 1]), for `show-augmentations`."""

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The pretext model: an NNX module with an `encoder` (what transfers; a ResNet) and an
        `online_probe` (a linear head, or None with `online_probe_classes=0`)."""

    def loss(
        self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        """Inside the jitted, sharded step: (scalar loss, metrics, encoder features [N, F] of
        each image, which the online probe classifies). `rng` is the step's key."""


@runtime_checkable
class StatefulTask(PretextTask, Protocol):
    """A task whose training keeps state that is not parameters (a momentum teacher, a queue of
    negatives): `TrainState.extra`, which the optimizer never sees, checkpointed, restored and
    sharded with the run. Its `loss` takes that state and returns it as the forward pass left
    it (the teacher's BatchNorm statistics, the queue after enqueueing); `update_extra` then
    moves it on after each optimizer step (the teacher's moving average of the new weights)."""

    # Keys of `extra` whose arrays are split along their first axis over the mesh's data axis
    # (e.g. a queue of keys); everything else is replicated like the parameters.
    sharded_extra: tuple[str, ...]

    def init_extra(self, params: dict, batch_stats: dict, rng: jax.Array) -> dict[str, Any]:
        """Inside the jitted init, from the freshly initialised model's arrays: the state."""

    def loss(
        self,
        model: nnx.Module,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        *,
        train: bool,
        extra: dict[str, Any],
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, dict[str, Any]]:
        """`PretextTask.loss` plus the state after this forward pass, fourth. Whatever of
        `extra` it reads passes no gradient: the engine differentiates the parameters only."""

    def update_extra(
        self,
        extra: dict[str, Any],
        params: dict,
        step: jax.Array,
        *,
        total_steps: int,
        steps_per_epoch: float,
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """After the optimizer step that took `step` to `step + 1` (of `total_steps`, at
        `steps_per_epoch` steps an epoch), with its new `params`: the next state, and metrics to
        log (e.g. the momentum used)."""


class _Stateless:
    """A plain `PretextTask` seen as a `StatefulTask` whose state is empty."""

    sharded_extra = ()

    def __init__(self, task: PretextTask):
        self.task = task

    def init_extra(self, params, batch_stats, rng) -> dict[str, Any]:
        return {}

    def loss(self, model, batch, rng, *, train, extra):
        return (*self.task.loss(model, batch, rng, train=train), extra)

    def update_extra(self, extra, params, step, *, total_steps, steps_per_epoch):
        return extra, {}


def stateful(task: PretextTask) -> StatefulTask:
    """`task` as the trainer drives it: itself if it keeps extra state, else with an empty one."""
    return task if isinstance(task, StatefulTask) else _Stateless(task)


def get_task(config: ml_collections.ConfigDict) -> PretextTask:
    """The task `config.task` names, built from `config` once the task's own rules passed (a
    ConfigError names the first value that breaks one)."""
    if config.task not in TASKS:
        raise ConfigError(f"unknown config.task={config.task!r}: use one of {sorted(TASKS)}.")
    check_values(config, value_rules(config))
    module, name = TASKS[config.task].split(":")
    return getattr(importlib.import_module(f"selfsup.pretext.{module}"), name)(config)

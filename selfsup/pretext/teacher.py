"""A momentum teacher (BYOL's target network, MoCo's key encoder): a second set of weights for
the pretext model that receives no gradient and follows the trained weights by an exponential
moving average after every optimizer step. A task keeps it in `TrainState.extra` as
`{"params", "batch_stats"}`, shaped like the model's own, so the teacher is the same network.

The teacher runs in the mode of the step (training mode in training: BatchNorm normalises by
the batch's own statistics, as both references run their teachers), and its running statistics
are its own forward passes' moving average, never averaged from the online network's: DeepMind's
BYOL carries the target's haiku state out of the target's forward pass, and MoCo's key encoder
is a torch module whose BatchNorm buffers its own forward pass updates while only its
parameters are momentum-updated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def copy_of(params: dict, batch_stats: dict) -> dict[str, Any]:
    """A teacher that starts as the model itself (MoCo copies the query encoder); copies, so
    the donated state never holds one buffer twice."""
    return {
        "params": jax.tree.map(jnp.copy, params),
        "batch_stats": jax.tree.map(jnp.copy, batch_stats),
    }


def run(
    model: nnx.Module, teacher: dict[str, Any], apply: Callable[[nnx.Module], Any]
) -> tuple[Any, dict[str, Any]]:
    """`apply` on the model with the teacher's weights: (its outputs, through stop_gradient, and
    the teacher with the BatchNorm statistics that forward pass left: in training mode, updated)."""
    teacher_model = nnx.merge(nnx.graphdef(model), teacher["params"], teacher["batch_stats"])
    outputs = jax.lax.stop_gradient(apply(teacher_model))
    batch_stats = nnx.to_pure_dict(nnx.state(teacher_model, nnx.BatchStat))
    return outputs, {"params": teacher["params"], "batch_stats": batch_stats}


def moving_average(teacher: dict[str, Any], params: dict, momentum: jax.Array) -> dict[str, Any]:
    """The teacher after one step: each parameter t + (1 - m)(p - t) = m t + (1 - m) p towards
    the model's new `params` (deepmind-research byol's update; moco's `_momentum_update_key_
    encoder`); its BatchNorm statistics stay its own."""
    moved = jax.tree.map(lambda t, p: t + (1.0 - momentum) * (p - t), teacher["params"], params)
    return {"params": moved, "batch_stats": teacher["batch_stats"]}


def cosine_momentum(step: jax.Array, total_steps: int, base: float) -> jax.Array:
    """BYOL's schedule (deepmind-research byol `schedules.target_ema`): `base` at step 0, rising
    as 1 - (1 - base)(cos(pi k / K) + 1) / 2 to 1 at step K = `total_steps`."""
    progress = jnp.minimum(step, total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

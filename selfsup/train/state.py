"""Training state (parameters, BatchNorm statistics, optimizer state), created already sharded.

The NNX model lives only at the edges: `nnx.split` gives a static graph definition plus plain
dicts of arrays, which is what the jitted step, the optimizer and the checkpoints see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfsup import parallel


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict[str, Any]
    batch_stats: dict[str, Any]
    opt_state: optax.OptState


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params, batch_stats) as plain dicts; any other variable kind is an error."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def _init_fn(build_model, tx, seed) -> Callable[[], TrainState]:
    def init() -> TrainState:
        _, params, batch_stats = split_model(build_model(nnx.Rngs(seed)))
        return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

    return init


def model_graphdef(build_model: Callable[[nnx.Rngs], nnx.Module]) -> nnx.GraphDef:
    """The model's static structure, without allocating its weights."""
    return split_model(nnx.eval_shape(lambda: build_model(nnx.Rngs(0))))[0]


def create_train_state(
    build_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    *,
    seed: int,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """Initialises the model and optimizer directly into replicated device memory."""
    return jax.jit(_init_fn(build_model, tx, seed), out_shardings=parallel.replicated(mesh))()


def abstract_train_state(
    build_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    *,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """Shapes, dtypes and shardings of a TrainState, for restoring a checkpoint into."""
    sharding = parallel.replicated(mesh)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        jax.eval_shape(_init_fn(build_model, tx, 0)),
    )

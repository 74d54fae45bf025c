"""Training state (parameters, BatchNorm statistics, optimizer state, a task's extra state),
created already sharded.

The NNX model lives only at the edges: `nnx.split` gives a static graph definition plus plain
dicts of arrays, which is what the jitted step, the optimizer and the checkpoints see.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from selfsup import parallel
from selfsup.pretext import PretextTask, stateful


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict[str, Any]
    batch_stats: dict[str, Any]
    opt_state: optax.OptState
    # A task's state that is not parameters (`StatefulTask.init_extra`: a momentum teacher, a
    # queue), {} for most tasks. Last and empty by default, so a checkpoint saved before the
    # field existed restores into a state without extra state.
    extra: dict[str, Any] = flax.struct.field(default_factory=dict)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params, batch_stats) as plain dicts; any other variable kind is an error."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def _init_fn(task: PretextTask, tx, seed):
    def init() -> TrainState:
        _, params, batch_stats = split_model(task.build_model(nnx.Rngs(seed)))
        # Its own key: the model's streams come from `seed` itself.
        extra = stateful(task).init_extra(
            params, batch_stats, jax.random.fold_in(jax.random.key(seed), 1)
        )
        return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params), extra)

    return init


def model_graphdef(build_model) -> nnx.GraphDef:
    """The model's static structure, without allocating its weights."""
    return split_model(nnx.eval_shape(lambda: build_model(nnx.Rngs(0))))[0]


def state_sharding(task: PretextTask, shapes: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Where each array of a state with these shapes lives: replicated, except the extra state
    the task shards (`StatefulTask.sharded_extra`), split along its first axis over the mesh."""
    sharded = stateful(task).sharded_extra

    def where(path, _) -> NamedSharding:
        top = [getattr(k, "name", getattr(k, "key", None)) for k in path[:2]]
        return NamedSharding(
            mesh, P(parallel.DATA_AXIS) if top[0] == "extra" and top[1] in sharded else P()
        )

    return jax.tree_util.tree_map_with_path(where, shapes)


def create_train_state(
    task: PretextTask, tx: optax.GradientTransformation, *, seed: int, mesh: jax.sharding.Mesh
) -> TrainState:
    """Initialises the model, optimizer and extra state directly into device memory."""
    init = _init_fn(task, tx, seed)
    return jax.jit(init, out_shardings=state_sharding(task, jax.eval_shape(init), mesh))()


def abstract_train_state(
    task: PretextTask, tx: optax.GradientTransformation, *, mesh: jax.sharding.Mesh
) -> TrainState:
    """Shapes, dtypes and shardings of a TrainState, for restoring a checkpoint into (and for
    the shardings a jitted step takes and gives)."""
    shapes = jax.eval_shape(_init_fn(task, tx, 0))
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        state_sharding(task, shapes, mesh),
    )

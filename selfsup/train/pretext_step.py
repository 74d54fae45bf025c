"""The pretraining step: a pretext task's loss plus the online probe's, as the engine trains it
and as held-out data measures it, with the task's extra state (a momentum teacher, a queue)
carried through the step and moved on after it. Free of TensorFlow, like the models, losses and
engine, so a benchmark or a user's own input pipeline can train a task without it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from selfsup import parallel
from selfsup.models.heads import online_probe_loss
from selfsup.pretext import PretextTask, stateful
from selfsup.train import engine
from selfsup.train.state import TrainState, abstract_train_state


def pretrain_loss(task: PretextTask, graphdef: nnx.GraphDef) -> engine.LossFn:
    """The pretext task's loss plus the online probe's (on stop-gradient features); the
    metrics report the pretext loss alone as `loss`."""

    def loss_fn(params, batch_stats, extra, batch, rng):
        model = nnx.merge(graphdef, params, batch_stats)
        loss, metrics, features, extra = stateful(task).loss(
            model, batch, rng, train=True, extra=extra
        )
        probe_loss, probe_metrics = online_probe_loss(model.online_probe, features, batch["label"])
        batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        metrics = {**metrics, **probe_metrics, "loss": loss}
        return loss + probe_loss, (metrics, batch_stats, extra)

    return loss_fn


def jit_train_step(
    task,
    graphdef,
    tx,
    schedule,
    *,
    seed: int,
    mesh: jax.sharding.Mesh,
    total_steps: int,
    steps_per_epoch: float,
):
    """The pretraining step as the engine runs it (and experiments/bench measures it);
    `total_steps` is the run's length and `steps_per_epoch` its epoch, over which a task's extra
    state may follow a schedule."""
    step = engine.make_train_step(
        pretrain_loss(task, graphdef),
        tx,
        seed=seed,
        schedule=schedule,
        update_extra=functools.partial(
            stateful(task).update_extra, total_steps=total_steps, steps_per_epoch=steps_per_epoch
        ),
    )
    return engine.jit_step(step, mesh, state_sharding=_sharding(task, tx, mesh))


def make_heldout_step(task: PretextTask, graphdef: nnx.GraphDef, *, seed: int):
    """`(state, batch) -> metrics` of the pretext loss and the online probe in inference mode
    (running BatchNorm statistics, no dropout), for held-out images; the extra state is read,
    never changed."""

    def heldout_step(state: TrainState, batch: dict[str, jax.Array]):
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        loss, metrics, features, _ = stateful(task).loss(
            model, batch, jax.random.key(seed), train=False, extra=state.extra
        )
        _, probe_metrics = online_probe_loss(model.online_probe, features, batch["label"])
        return {**metrics, **probe_metrics, "loss": loss}

    return heldout_step


def jit_heldout_step(task: PretextTask, graphdef: nnx.GraphDef, tx, *, seed: int, mesh):
    """`make_heldout_step` compiled for states placed as the train step leaves them."""
    return jax.jit(
        make_heldout_step(task, graphdef, seed=seed),
        in_shardings=(_sharding(task, tx, mesh), parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )


def _sharding(task: PretextTask, tx, mesh) -> TrainState:
    return jax.tree.map(lambda s: s.sharding, abstract_train_state(task, tx, mesh=mesh))


def heldout_metrics(heldout_step, state: TrainState, batches) -> dict[str, float]:
    """Means of the pretext metrics over every held-out batch, as `heldout/<name>`."""
    total, count = None, 0
    for batch in batches:
        metrics = heldout_step(state, batch)
        total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
        count += 1
    return {f"heldout/{k}": float(v) / count for k, v in jax.device_get(total).items()}

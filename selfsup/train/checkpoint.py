"""Checkpoints with orbax: save every N steps (keep the newest few), resume, load an encoder.

A workdir's `checkpoints/` holds the full TrainState; `config.json` beside it says how to
rebuild the model, so evaluators can load a pretrained encoder from the workdir alone.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from selfsup.config import ConfigError, load_saved_config
from selfsup.pretext import get_task
from selfsup.train.optim import make_optimizer
from selfsup.train.state import TrainState, abstract_train_state, model_graphdef


class Checkpointer:
    def __init__(self, workdir: str | Path, *, keep: int):
        self.manager = ocp.CheckpointManager(
            Path(workdir).absolute() / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, step: int, abstract_state: TrainState) -> TrainState:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_pretrained_model(workdir: str | Path, mesh: jax.sharding.Mesh):
    """(pretraining config, latest checkpoint step, model with its weights) of a workdir."""
    config = load_saved_config(workdir)
    task = get_task(config)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    step = checkpointer.latest_step()
    if step is None:
        raise ConfigError(
            f"{workdir} has no checkpoint yet: run `python -m selfsup pretrain` with "
            f"--workdir={workdir} first (or wait for its first checkpoint)."
        )
    # The optimizer only shapes the abstract state; its schedule values do not matter here.
    tx, _ = make_optimizer(
        config.optim, batch_size=config.batch_size, total_steps=1, warmup_steps=0
    )
    state = checkpointer.restore(step, abstract_train_state(task.build_model, tx, mesh=mesh))
    checkpointer.close()
    return (
        config,
        step,
        nnx.merge(model_graphdef(task.build_model), state.params, state.batch_stats),
    )

"""Checkpoints with orbax: save every N steps (keep the newest few), resume, load an encoder.

A workdir's `checkpoints/` holds the full TrainState; `config.json` beside it says how to
rebuild the model, so evaluators can load a pretrained encoder from the workdir alone.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from selfsup.config import ConfigError, load_saved_config
from selfsup.pretext import get_task
from selfsup.train.optim import make_optimizer
from selfsup.train.state import TrainState, abstract_train_state, model_graphdef


class Checkpointer:
    def __init__(self, workdir: str | Path, *, keep: int):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def unfinished_saves(self) -> list[str]:
        """Folders of saves still being written or cut short by a kill: orbax writes a step
        into `<step>.orbax-checkpoint-tmp` and renames it into place only once complete, so
        these are never restored, and saving that step again replaces them."""
        return sorted(p.name for p in self.directory.glob(f"*{ocp.path.step.TMP_DIR_SUFFIX}*"))

    def restore(self, step: int, abstract_state: TrainState) -> TrainState:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def restore_latest(self, abstract_state: TrainState) -> tuple[int, TrainState]:
        """The newest checkpoint that restores. An unreadable one (truncated or damaged files)
        is moved aside to `checkpoints/<step>.unreadable[.n]`, never deleted, and the next older one
        is tried; if none restores, that is an error rather than a silent fresh start."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.restore(step, abstract_state)
            except Exception as e:  # Orbax and tensorstore raise many kinds.
                aside = _unused_path(self.directory / f"{step}.unreadable")
                if jax.process_index() == 0:  # One mover; every process then skips the step.
                    (self.directory / str(step)).rename(aside)
                self.manager.reload()
                print(
                    f"Checkpoint at step {step} is unreadable ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:150]}); moved it to {aside}, trying an older one."
                )
        raise ConfigError(
            f"no readable checkpoint in {self.directory} (unreadable ones were moved to "
            "<step>.unreadable): move the checkpoints folder away to start over."
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _unused_path(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def load_train_state(
    workdir: str | Path, mesh: jax.sharding.Mesh, *, step: int | None = None
) -> tuple[ml_collections.ConfigDict, int, TrainState]:
    """(pretraining config, checkpoint step, full train state) of a workdir: its latest
    readable checkpoint, or the one saved at `step`."""
    config = load_saved_config(workdir)
    task = get_task(config)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    if checkpointer.latest_step() is None:
        raise ConfigError(
            f"{workdir} has no checkpoint yet: run `python -m selfsup pretrain` with "
            f"--workdir={workdir} first (or wait for its first checkpoint)."
        )
    # The optimizer only shapes the abstract state; its schedule values do not matter here.
    tx, _ = make_optimizer(
        config.optim,
        batch_size=config.batch_size,
        total_steps=1,
        warmup_steps=0,
        steps_per_epoch=1.0,
    )
    abstract_state = abstract_train_state(task.build_model, tx, mesh=mesh)
    if step is None:
        step, state = checkpointer.restore_latest(abstract_state)
    else:
        state = checkpointer.restore(step, abstract_state)
    checkpointer.close()
    return config, step, state


def load_pretrained_model(workdir: str | Path, mesh: jax.sharding.Mesh):
    """(pretraining config, latest checkpoint step, model with its weights) of a workdir."""
    config, step, state = load_train_state(workdir, mesh)
    graphdef = model_graphdef(get_task(config).build_model)
    return config, step, nnx.merge(graphdef, state.params, state.batch_stats)

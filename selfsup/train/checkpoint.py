"""Checkpoints with orbax: save every N steps (keep the newest few), resume, load an encoder.

A workdir's `checkpoints/<step>/` holds the full TrainState plus, in orbax's step metadata, the
metric sums since the last logged step (so a resumed run logs what an uninterrupted one does);
`SHA256SUMS` beside it records every file's checksum once the save is complete, so a changed
byte is caught on restore. `config.json` beside `checkpoints/` says how to rebuild the model.

Each checkpoint is judged by itself: damaged (a file that fails its checksum, is missing, or
does not load) or not fitting the model (a config error: never damage). A pretraining run moves
a damaged one aside and falls back to the next older one; a reader (evaluate) only skips it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from selfsup.config import ConfigError, load_saved_config
from selfsup.pretext import get_task
from selfsup.train.optim import make_optimizer
from selfsup.train.state import TrainState, abstract_train_state, model_graphdef
from selfsup.workdir import check_made_by

CHECKSUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` in a step directory checks it by hand.
ITEM = "default"  # Orbax's folder for a step's single item.
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's file of a step's metadata (custom_metadata).
ASIDE = ("unreadable", "abandoned")  # Suffixes of the folders `move_aside` makes.


class DamagedCheckpoint(Exception):
    """A checkpoint whose files are missing, changed since saved, or do not load."""


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    state: TrainState
    metric_window: dict[str, Any]  # {"steps": n, "sums": {name: [value, dtype]}}; may be empty.


class Checkpointer:
    """The checkpoints of one workdir. `read_only` (an evaluation reading another run) lists and
    restores without creating, moving or writing anything."""

    def __init__(self, workdir: str | Path, *, keep: int = 1, read_only: bool = False):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.read_only = read_only
        self.manager = None
        if not read_only:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unsummed: int | None = None  # A step saved but not yet checksummed.

    def steps(self) -> list[int]:
        """The steps of complete saves, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(ocp.path.step.checkpoint_steps(self.directory))

    def latest_step(self) -> int | None:
        return (self.steps() or [None])[-1]

    def set_aside(self) -> list[str]:
        """Folders of checkpoints moved aside (damaged, or newer than a chosen resume step)."""
        return sorted(p.name for p in self.directory.glob("*.*") if p.name.split(".")[1] in ASIDE)

    def unfinished_saves(self) -> list[str]:
        """Folders of saves still being written or cut short by a kill: orbax writes a step
        into `<step>.orbax-checkpoint-tmp` and renames it into place only once complete, so
        these are never restored, and saving that step again replaces them."""
        return sorted(p.name for p in self.directory.glob(f"*{ocp.path.step.TMP_DIR_SUFFIX}*"))

    def save(self, step: int, state: TrainState, *, metric_window: dict[str, Any]) -> None:
        self._checksum_finished_save()
        self.manager.save(
            step,
            args=ocp.args.StandardSave(state),
            custom_metadata={"metric_window": metric_window},
        )
        self._unsummed = step

    def _checksum_finished_save(self) -> None:
        self.manager.wait_until_finished()
        step, self._unsummed = self._unsummed, None
        folder = self.directory / str(step)
        if step is None or jax.process_index() != 0 or not folder.is_dir():
            return
        lines = [f"{_sha256(f)}  {f.relative_to(folder)}\n" for f in _files(folder)]
        (folder / CHECKSUMS).write_text("".join(lines))

    def restore(self, step: int, abstract_state: TrainState) -> Restored:
        """Checkpoint `step`, or DamagedCheckpoint; ConfigError if there is no such step or it
        does not fit the model."""
        if step not in self.steps():
            have = ", ".join(map(str, self.steps())) or "none"
            raise ConfigError(f"no checkpoint at step {step} in {self.directory} (steps: {have}).")
        folder = self.directory / str(step)
        verify_checksums(folder)
        try:
            saved = ocp.StandardCheckpointHandler().metadata(folder / ITEM).tree
        except Exception as e:  # Orbax and tensorstore raise many kinds.
            raise DamagedCheckpoint(f"its metadata does not load ({_reason(e)})") from None
        check_fits(saved, abstract_state, f"checkpoint {folder}")
        # The fields the checkpoint holds: one saved before `TrainState.extra` existed has no
        # such field, and restores with the empty default (check_fits saw no array missing).
        fields = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(TrainState)}
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                restored = checkpointer.restore(
                    folder / ITEM, {k: v for k, v in fields.items() if k in saved}
                )
            state = TrainState(**restored)
            step_metadata = json.loads((folder / STEP_METADATA).read_text())
        except Exception as e:
            raise DamagedCheckpoint(f"it does not load ({_reason(e)})") from None
        window = (step_metadata.get("custom_metadata") or {}).get("metric_window", {})
        return Restored(step, state, window)

    def restore_latest(self, abstract_state: TrainState) -> Restored:
        """The newest checkpoint that restores. A damaged one is reported and tried no further:
        a writer moves it to `<step>.unreadable[.n]` (never deleted), so the step can be saved
        again; a reader leaves it be. None restoring is an error, never a fresh start."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state)
            except DamagedCheckpoint as e:
                kept = (
                    "left in place"
                    if self.read_only
                    else f"kept as {self.move_aside(step, 'unreadable')}"
                )
                print(f"Checkpoint at step {step} is damaged ({e}); {kept}; trying an older one.")
        raise ConfigError(
            f"no readable checkpoint in {self.directory} (damaged ones are kept as "
            "<step>.unreadable): move that folder away to start over, or pass another --workdir."
        )

    def move_aside(self, step: int, why: str) -> Path:
        """Renames checkpoint `step` to `<step>.<why>[.n]`, out of orbax's sight."""
        aside = _unused_path(self.directory / f"{step}.{why}")
        if jax.process_index() == 0:  # One mover; every process then skips the step.
            (self.directory / str(step)).rename(aside)
        self.manager.reload()
        return aside

    def close(self) -> None:
        if not self.read_only:
            self._checksum_finished_save()
            self.manager.close()


def verify_checksums(folder: Path) -> None:
    """Raises DamagedCheckpoint unless every file listed in `folder/SHA256SUMS` is unchanged. A
    folder without the list (saved by an older selfsup, or cut off right after its save) is
    restored unverified, with a note."""
    listing = folder / CHECKSUMS
    if not listing.exists():
        if folder.is_dir():
            print(f"Checkpoint {folder} has no {CHECKSUMS}: restoring it unverified.")
        return
    for line in listing.read_text().splitlines():
        digest, _, name = line.partition("  ")
        file = folder / name
        if not name:
            raise DamagedCheckpoint(f"{CHECKSUMS} is cut short")
        if not file.is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        if _sha256(file) != digest:
            raise DamagedCheckpoint(f"{name} changed since it was saved (checksum mismatch)")


def check_fits(saved: Any, abstract_state: TrainState, what: str) -> None:
    """ConfigError naming the arrays whose presence or shape differ between a checkpoint's
    metadata and the model the config builds."""
    have, want = _shapes(saved), _shapes(abstract_state)
    differ = [
        f"{name} {have.get(name, 'absent')} vs {want.get(name, 'absent')}"
        for name in sorted(have.keys() | want.keys())
        if have.get(name) != want.get(name)
    ]
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ConfigError(
            f"{what} does not fit the model of this config (checkpoint vs model: "
            f"{'; '.join(differ[:3])}{more}): use the config it was trained with."
        )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    def name(path) -> str:
        return "/".join(
            str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path
        )

    return {name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name != CHECKSUMS)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:150]}"


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
    readable checkpoint, or the one saved at `step`. Reads only: nothing in `workdir` changes."""
    check_made_by(workdir, "pretrain", flag="--config.checkpoint")
    config = load_saved_config(workdir)
    checkpointer = Checkpointer(workdir, read_only=True)
    if not checkpointer.steps():
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
    abstract_state = abstract_train_state(get_task(config), tx, mesh=mesh)
    try:
        if step is None:
            restored = checkpointer.restore_latest(abstract_state)
        else:
            restored = checkpointer.restore(step, abstract_state)
    except DamagedCheckpoint as e:
        raise ConfigError(f"checkpoint at step {step} of {workdir} is damaged ({e}).") from None
    finally:
        checkpointer.close()
    return config, restored.step, restored.state


def load_pretrained_model(workdir: str | Path, mesh: jax.sharding.Mesh):
    """(pretraining config, latest checkpoint step, model with its weights) of a workdir."""
    config, step, state = load_train_state(workdir, mesh)
    graphdef = model_graphdef(get_task(config).build_model)
    return config, step, nnx.merge(graphdef, state.params, state.batch_stats)

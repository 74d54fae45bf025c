"""Checkpoints with orbax: save every N steps (keep the newest few), resume, load an encoder.

A workdir's `checkpoints/<step>/` holds the full TrainState, `metric_window.json` (the metric
sums since the last logged step, so a resumed run logs what an uninterrupted one does) and
`SHA256SUMS`, the checksum of every file but orbax's commit record. Both are written as part of
the save (asynchronous, as orbax's is), atomically, into orbax's temporary folder before orbax
renames it into place: a step that exists is complete and verifiable, and a kill at any point
of a save leaves only an unfinished temporary folder, never restored.
`config.json` beside `checkpoints/` says how to rebuild the model.

Each checkpoint is judged by itself: damaged (a file that fails its checksum, is missing, or
does not load), not verified (its SHA256SUMS missing, empty or cut short: treated as damaged,
never restored unchecked), or not fitting the model (a config error: never damage). A
pretraining run moves a damaged one aside and falls back to the next older one; a reader
(evaluate, export, load_encoder, init_from) only skips it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from selfsup.config import ConfigError, load_saved_config
from selfsup.files import write_atomically
from selfsup.pretext import get_task
from selfsup.train.optim import make_optimizer
from selfsup.train.state import TrainState, abstract_train_state, model_graphdef
from selfsup.workdir import check_made_by

CHECKSUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` in a step directory checks it by hand.
_DIGEST = re.compile("[0-9a-f]{64}")  # A line of it: digest, two spaces, file name.
ITEM = "default"  # Orbax's folder for a step's single item.
WINDOW = "metric_window.json"  # The metric sums since the last logged step.
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's step metadata (older saves kept the sums there).
# What orbax writes into a step as it renames it into place (a commit time, a marker): not
# covered by the checksums, which are written just before, and not read by selfsup.
COMMIT_RECORD = frozenset({STEP_METADATA, "commit_success.txt"})
ASIDE = ("unreadable", "abandoned")  # Suffixes of the folders `move_aside` makes.


class DamagedCheckpoint(Exception):
    """A checkpoint whose files are missing, changed since saved, or do not load."""

    verdict = "damaged"


class UnverifiedCheckpoint(DamagedCheckpoint):
    """A checkpoint whose SHA256SUMS is missing, empty or cut short: nothing vouches for its
    files (a changed byte would restore silently and diverge), so it is handled as damaged."""

    verdict = "not verified"


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
            # Saves stay asynchronous; orbax calls this once a save's files are all written and
            # before it renames the save's folder into place.
            done = ocp.AsyncOptions(post_finalization_callback=self._write_checksums)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, async_options=done
            )
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._saving: tuple[int, dict] | None = None  # (step, metric window) being saved.

    def steps(self) -> list[int]:
        """The steps of complete saves, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(ocp.path.step.checkpoint_steps(self.directory))

    def latest_step(self) -> int | None:
        return (self.steps() or [None])[-1]

    def intact_steps(self) -> list[int]:
        """The steps whose files match their checksums, oldest first."""
        return [s for s in self.steps() if _verifies(self.directory / str(s))]

    def set_aside(self) -> list[str]:
        """Folders of checkpoints moved aside (damaged, or newer than a chosen resume step)."""
        return sorted(p.name for p in self.directory.glob("*.*") if p.name.split(".")[1] in ASIDE)

    def unfinished_saves(self) -> list[str]:
        """Folders of saves still being written or cut short by a kill: orbax writes a step
        into `<step>.orbax-checkpoint-tmp` and renames it into place only once complete, so
        these are never restored, and saving that step again replaces them."""
        return sorted(p.name for p in self.directory.glob(f"*{ocp.path.step.TMP_DIR_SUFFIX}*"))

    def save(self, step: int, state: TrainState, *, metric_window: dict[str, Any]) -> None:
        self.manager.wait_until_finished()  # The previous save is renamed into place by then.
        self._saving = step, metric_window
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def _write_checksums(self) -> None:
        """The metric window and SHA256SUMS of the save in progress, each written atomically
        into its temporary folder (the step's own folder where orbax writes in place)."""
        step, window = self._saving
        final = self.directory / str(step)
        folder = final.with_name(final.name + ocp.path.step.TMP_DIR_SUFFIX)
        if jax.process_index() == 0:
            folder = folder if folder.is_dir() else final
            write_atomically(folder / WINDOW, json.dumps(window))
            write_checksums(folder)

    def verified_step(self, step: int | None, *, how: str) -> int:
        """`step` (one of `steps()`; default: the newest step whose checksums verify, a damaged
        newer one reported and left in place) once its checksums verify; else a ConfigError
        naming the step, the intact ones, and `how` to choose one."""
        if step is None:
            for step in reversed(self.steps()):
                try:
                    verify_checksums(self.directory / str(step))
                    return step
                except DamagedCheckpoint as e:
                    print(self._skipped(step, e, "left in place"))
            raise self._none_readable()
        try:
            verify_checksums(self.directory / str(step))
        except DamagedCheckpoint as e:
            raise self.damaged_error(step, e, how) from None
        return step

    def damaged_error(self, step: int, error: DamagedCheckpoint, how: str) -> ConfigError:
        intact = ", ".join(map(str, self.intact_steps())) or "none"
        return ConfigError(
            f"the checkpoint at step {step} in {self.directory} is {error.verdict} ({error}): "
            f"{how} (intact steps: {intact})."
        )

    def _check_exists(self, step: int) -> None:
        if step not in self.steps():
            have = ", ".join(map(str, self.steps())) or "none"
            raise ConfigError(f"no checkpoint at step {step} in {self.directory} (steps: {have}).")

    def _skipped(self, step: int, error: DamagedCheckpoint, kept: str) -> str:
        return (
            f"Checkpoint at step {step} is {error.verdict} ({error}); {kept}; trying an older one."
        )

    def _none_readable(self) -> ConfigError:
        if self.read_only:
            return ConfigError(
                f"no readable checkpoint in {self.directory} (each is damaged or not verified, "
                "as said above): pass a run with an intact one."
            )
        return ConfigError(
            f"no readable checkpoint in {self.directory} (damaged ones are kept as "
            "<step>.unreadable): move that folder away to start over, or pass another --workdir."
        )

    def restore(self, step: int, abstract_state: TrainState) -> Restored:
        """Checkpoint `step`, or DamagedCheckpoint; ConfigError if there is no such step or it
        does not fit the model."""
        self._check_exists(step)
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
            window = _metric_window(folder)
        except Exception as e:
            raise DamagedCheckpoint(f"it does not load ({_reason(e)})") from None
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
                print(self._skipped(step, e, kept))
        raise self._none_readable()

    def move_aside(self, step: int, why: str) -> Path:
        """Renames checkpoint `step` to `<step>.<why>[.n]`, out of orbax's sight."""
        aside = _unused_path(self.directory / f"{step}.{why}")
        if jax.process_index() == 0:  # One mover; every process then skips the step.
            (self.directory / str(step)).rename(aside)
        self.manager.reload()
        return aside

    def close(self) -> None:
        if not self.read_only:
            self.manager.close()


def write_checksums(folder: Path) -> None:
    """`folder/SHA256SUMS`: every file's checksum, in `sha256sum`'s format, written atomically."""
    lines = [f"{_sha256(f)}  {f.relative_to(folder)}\n" for f in _files(folder)]
    write_atomically(folder / CHECKSUMS, "".join(lines))


def verify_checksums(folder: Path) -> None:
    """Raises DamagedCheckpoint unless `folder/SHA256SUMS` lists every file of the folder and
    each is unchanged; UnverifiedCheckpoint if the list is missing, empty or cut short (a kill
    while an older selfsup wrote it, or a save from before checksums)."""
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise UnverifiedCheckpoint(f"it has no {CHECKSUMS}")
    text = listing.read_bytes().decode(errors="replace")
    entries = [line.partition("  ") for line in text.splitlines()]
    if not text.strip():
        raise UnverifiedCheckpoint(f"its {CHECKSUMS} is empty")
    listed = {name: digest for digest, _, name in entries}
    if not text.endswith("\n") or not all(_DIGEST.fullmatch(d) and n for d, _, n in entries):
        raise UnverifiedCheckpoint(f"its {CHECKSUMS} is cut short")
    if unlisted := sorted({str(f.relative_to(folder)) for f in _files(folder)} - listed.keys()):
        raise UnverifiedCheckpoint(f"its {CHECKSUMS} is cut short (no checksum of {unlisted[0]})")
    for name, digest in listed.items():
        if not (folder / name).is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        if _sha256(folder / name) != digest:
            raise DamagedCheckpoint(f"{name} changed since it was saved (checksum mismatch)")


def _verifies(folder: Path) -> bool:
    try:
        verify_checksums(folder)
    except DamagedCheckpoint:
        return False
    return True


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


def _metric_window(folder: Path) -> dict[str, Any]:
    if (folder / WINDOW).is_file():
        return json.loads((folder / WINDOW).read_text())
    step_metadata = json.loads((folder / STEP_METADATA).read_text())  # Saved before WINDOW.
    return (step_metadata.get("custom_metadata") or {}).get("metric_window", {})


def _files(folder: Path) -> list[Path]:
    """The files the checksums cover: all but SHA256SUMS and orbax's commit record."""
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and f.name != CHECKSUMS and str(f.relative_to(folder)) not in COMMIT_RECORD
    )


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
        raise checkpointer.damaged_error(step, e, "pass another step") from None
    finally:
        checkpointer.close()
    return config, restored.step, restored.state


def load_pretrained_model(workdir: str | Path, mesh: jax.sharding.Mesh):
    """(pretraining config, latest checkpoint step, model with its weights) of a workdir."""
    config, step, state = load_train_state(workdir, mesh)
    graphdef = model_graphdef(get_task(config).build_model)
    return config, step, nnx.merge(graphdef, state.params, state.batch_stats)

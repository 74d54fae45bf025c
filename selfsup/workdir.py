"""A run's claim on its workdir: an exclusive lock held for the run's life, so a second run
pointed at a workdir that a live run uses is refused; the command that made a workdir,
so no other kind of command writes into it (an evaluation into a pretraining workdir would
replace its config.json and metrics); and the check that a workdir being resumed was made by
the same config (resuming under another config mixes two experiments in one set of
checkpoints and metrics)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import jax
import ml_collections

from selfsup.config import ConfigError, read_saved_config
from selfsup.files import write_atomically

LOCK_FILE = ".lock"
COMMAND_FILE = ".command"  # The command that made the workdir: one of COMMANDS.
COMMANDS = ("pretrain", "evaluate", "export", "demo", "show-augmentations")
# Commands that run others in subfolders of their own workdir (demo: pretrain, then evaluate).
COMPOSING_COMMANDS = frozenset({"demo"})
_HELD: set[Path] = set()  # Workdirs this process claims now (a composing command's own).
# Keys that change how a run reports or where it finds its data, not what it computes: a
# key whose last part is one of these (`finetune.log_every_steps` too).
REPORTING_KEYS = frozenset(
    {
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "data_dir",
    }
)
_MISSING = "<absent>"
# A summary.json key each command writes, for recognising workdirs that predate COMMAND_FILE.
LEGACY_SUMMARY_KEYS = {
    "pretrain/steps": "pretrain",
    "evaluate/wall_seconds": "evaluate",
    "demo/wall_seconds": "demo",
    "show/images": "show-augmentations",
}


def made_by(workdir: str | Path) -> str | None:
    """The command that made `workdir`, or None for a new folder or one no command wrote.
    Workdirs written before `.command` existed are recognised by their files."""
    workdir = Path(workdir)
    if (workdir / COMMAND_FILE).is_file():
        if command := (workdir / COMMAND_FILE).read_text().strip():
            return command
        raise ConfigError(
            f"{workdir / COMMAND_FILE} is empty (cut short when written), so which command made "
            f"{workdir} is unknown: write the one that did ({', '.join(COMMANDS)}) into it, or "
            "pass another --workdir."
        )
    if (workdir / "checkpoints").is_dir():
        return "pretrain"
    summary = workdir / "summary.json"
    try:
        keys = json.loads(summary.read_text()) if summary.is_file() else {}
    except json.JSONDecodeError:
        raise ConfigError(
            f"{summary} is not valid JSON, so which command made {workdir} is unknown: "
            f"write the command that made it ({', '.join(COMMANDS)}) into "
            f"{workdir / COMMAND_FILE}, or pass another --workdir."
        ) from None
    return next((c for key, c in LEGACY_SUMMARY_KEYS.items() if key in keys), None)


def check_made_by(workdir: str | Path, command: str, *, flag: str = "--workdir") -> None:
    """Refuses a workdir that another kind of command made (`flag` names where it came from)."""
    maker = made_by(workdir)
    if maker not in (None, command):
        other = "a new or empty folder, or " if flag == "--workdir" else ""
        raise ConfigError(
            f"{flag}={workdir} holds the output of `python -m selfsup {maker}`, not of "
            f"`{command}`: pass {other}a folder that `{command}` made."
        )


@contextlib.contextmanager
def claim(workdir: str | Path, command: str) -> Iterator[None]:
    """Holds an exclusive `flock` on `workdir/.lock` while the block runs, or refuses; marks
    the workdir as `command`'s, and refuses one that another kind of command made.

    The kernel releases the lock when its process ends, however it ends (SIGKILL, OOM, a
    crashed host), so a dead run's lock file never blocks the next run. In a multi-process run
    process 0 holds it for all. `flock` is advisory and local: it guards POSIX filesystems
    (local disk, most NFS setups), not object stores such as GCS.
    """
    workdir = Path(workdir)
    check_made_by(workdir, command)
    check_not_nested(workdir, command)
    workdir.mkdir(parents=True, exist_ok=True)
    _HELD.add(workdir.resolve())
    try:
        with _locked(workdir, command):
            yield
    finally:
        _HELD.discard(workdir.resolve())


@contextlib.contextmanager
def _locked(workdir: Path, command: str) -> Iterator[None]:
    if jax.process_index() != 0:
        yield
        return
    with open(workdir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown process"
            raise ConfigError(
                f"{workdir} is in use by a running job ({owner}): wait for it to finish or stop "
                "it, or pass another --workdir."
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        check_made_by(workdir, command)  # Again, now that no other run can be writing it.
        write_atomically(workdir / COMMAND_FILE, command + "\n")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_not_nested(workdir: str | Path, command: str) -> None:
    """Refuses a workdir inside another command's workdir (`RUN/checkpoints` would write into
    RUN) or holding one (its outputs would mix with that run's). A composing command's parts
    may nest in the workdir it holds, and its own workdir may hold them."""
    path = Path(workdir).resolve()
    outer = next((p for p in path.parents if (p / COMMAND_FILE).is_file() and p not in _HELD), None)
    inner = None
    if command not in COMPOSING_COMMANDS and path.is_dir():
        inner = next((p.parent for p in path.glob(f"*/**/{COMMAND_FILE}")), None)
    if outer or inner:
        which, where = (outer, "is inside") if outer else (inner, "holds")
        maker = (which / COMMAND_FILE).read_text().strip() or "another command"
        raise ConfigError(
            f"--workdir={workdir} {where} {which}, the workdir of `python -m selfsup "
            f"{maker}`: pass a folder outside any other command's workdir."
        )


def _changed_keys(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, tuple]:
    """`{key: (saved value, new value)}` for every computation-relevant key in which `config`
    differs from the `config.json` an earlier run wrote into `workdir` (empty if none)."""
    path = Path(workdir, "config.json")
    if not path.exists():
        return {}
    saved = _computed(read_saved_config(path))
    new = computation_values(config)
    return {
        key: (saved.get(key, _MISSING), new.get(key, _MISSING))
        for key in sorted(saved.keys() | new.keys())
        if saved.get(key, _MISSING) != new.get(key, _MISSING)
    }


def computation_values(config: ml_collections.ConfigDict) -> dict[str, object]:
    """{dotted key: value} of every key of `config` that changes what a run computes."""
    return _computed(json.loads(config.to_json_best_effort()))


def _computed(tree: dict) -> dict[str, object]:
    return {k: v for k, v in _flatten(tree).items() if k.split(".")[-1] not in REPORTING_KEYS}


def check_same_config(
    config: ml_collections.ConfigDict, workdir: str | Path, *, allow_change: bool
) -> None:
    """Refuses to resume `workdir` under a config that differs from the one it was made with,
    unless `allow_change` (the CLI's --allow_config_change) says to resume anyway."""
    changed = _changed_keys(config, workdir)
    if changed and not allow_change:
        shown = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:4]]
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"{workdir} holds a run of a different config ({'; '.join(shown)}{more}): pass "
            "another --workdir, or --allow_config_change to resume it under the new config."
        )


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

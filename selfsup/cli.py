"""Command line: `python -m selfsup {demo,pretrain,evaluate,show-augmentations,export}
--config=FILE[:arg] --workdir=DIR`; demo and export, which have one config file each, take it
when `--config` is left out (their `--config.KEY=VALUE` overrides then apply to it).

Errors a user can fix (bad config, missing data, NaN loss, a full or read-only disk) end the
command with one line that names the problem and the fix, instead of a stack trace, and exit
status 1; SIGTERM and Ctrl-C stop a training run (pretraining, fine-tuning in evaluate) with a
checkpoint, and any other work at once, in one line (exit status 128 + the signal's number, as
shells report a job a signal ended).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging as pylogging
import os
import re
import signal
import sys
from pathlib import Path
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from selfsup.config import (
    VALUE_RULES,
    ConfigError,
    Rule,
    check_values,
    flat_items,
    load_config_file,
)

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS_DIR / "demo.py"
# The config file of a command that has only one, used when --config is not given.
DEFAULT_CONFIGS = {"demo": DEMO_CONFIG, "export": CONFIGS_DIR / "export.py"}
COMMANDS = ("demo", "pretrain", "evaluate", "show-augmentations", "export")
# What to do about an OS error in reading or writing a file, by errno.
_NO_SPACE = "free space there or pass a --workdir elsewhere, then re-run the same command"
# What that re-run does, by command.
_RERUN = {
    "pretrain": "it resumes from its last checkpoint",
    "demo": "its pretraining resumes from its last checkpoint",
    "export": "it exports again, from the start",
}
OS_ERROR_FIXES = {
    errno.ENOSPC: _NO_SPACE,
    errno.EDQUOT: _NO_SPACE,
    errno.EFBIG: "raise the file size limit (ulimit -f) or pass a --workdir elsewhere",
    errno.EROFS: "pass a --workdir on a writable file system",
    errno.EACCES: "give this user access to it, or pass another path",
    errno.EPERM: "give this user access to it, or pass another path",
}


class _ConfigFileParser(flags.ArgumentParser):
    """`--config=file.py[:arg]` loaded by `load_config_file`, whose errors are one line (in
    place of config_flags' own loader, which lets a broken file's traceback through)."""

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        path, _, arg = argument.partition(":")
        return load_config_file(path, arg or None)

    def flag_type(self) -> str:
        return "config object"


_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, `configs/X.py` or `configs/X.py:runlocal` (demo and export: their own).",
    lock_config=True,
)
flags.FLAGS["config"].parser = _ConfigFileParser()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; re-running pretrain on it resumes its latest checkpoint."
)
# Multi-process runs without a scheduler JAX detects (TPU pods, SLURM, Open MPI, Kubernetes
# need none of these): the same command on every process, differing only in --process_id.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 8, "show-augmentations: how many training images to show."
)
_RESUME_STEP = flags.DEFINE_integer(
    "resume_step",
    None,
    "pretrain: resume from the checkpoint of this step instead of the latest (after a "
    "divergence); newer checkpoints are moved aside to checkpoints/<step>.abandoned.",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a pretraining or evaluation workdir even though --config differs from the one it "
    "was made with (an evaluation then starts over).",
)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m selfsup {{{','.join(COMMANDS)}}} [--flags]")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    logging.get_absl_logger().addFilter(_without_orbax_tracebacks)
    sys.excepthook, sys.unraisablehook = _excepthook, _unraisablehook
    signal.signal(signal.SIGTERM, _stopped)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ignored in background jobs.
        signal.signal(signal.SIGINT, _stopped)
    run_command(argv[1])


def _stopped(signum, frame) -> None:
    """SIGTERM or Ctrl-C outside a training loop (whose own handler checkpoints first): stop at
    once, in one line. A KeyboardInterrupt instead can land in a callback that swallows it
    (JAX's garbage-collection callback does), and the command would run on. What the commands
    keep is written atomically, so stopping anywhere loses only the work under way."""
    with contextlib.suppress(RuntimeError):  # Reentrant: the handler interrupted a print.
        sys.stdout.flush()
    what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "stopped by SIGTERM"
    os.write(
        sys.stderr.fileno(),
        f"error: {what}: re-run the same command to continue (pretrain resumes from its last "
        "checkpoint, evaluate keeps the features and results it finished).\n".encode(),
    )
    os._exit(128 + signum)


def run_command(command: str) -> None:
    from selfsup.train.engine import NonFiniteLossError, PreemptedError

    try:
        from selfsup import parallel

        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        parallel.reuse_step_memory()
        dispatch(command)
    except PreemptedError as e:
        fail(str(e), 128 + e.signum)
    except Exception as e:
        if os_error := reported_os_error(e):
            fail(f"error: {os_error_line(os_error, _WORKDIR.value, command)}")
        if isinstance(e, (ValueError, NonFiniteLossError)):  # ConfigError, DataError included.
            fail(f"error: {first_line(e)}")
        raise  # A bug: its traceback is what a report needs.


def dispatch(command: str) -> None:
    """Runs `command`'s module with the parsed flags; each command imports only its own."""
    config = _CONFIG.value
    if command == "demo":
        from selfsup.demo import demo
        from selfsup.workdir import claim

        workdir = checked_workdir(_WORKDIR.value or "runs/demo")
        with claim(workdir, "demo"):
            demo(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
        return
    if config is None or _WORKDIR.value is None:
        needs = "" if command in DEFAULT_CONFIGS else "--config=configs/X.py and "
        raise ConfigError(f"{command} needs {needs}--workdir=DIR.")
    workdir = checked_workdir(_WORKDIR.value)
    if command == "pretrain":
        from selfsup.train.loop import pretrain

        pretrain(
            config,
            workdir,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
            resume_step=_RESUME_STEP.value,
        )
    elif command == "show-augmentations":
        from selfsup.show import show_augmentations

        show_augmentations(config, workdir, num_images=_NUM_IMAGES.value)
    elif command == "export":
        from selfsup.export import export

        export(config, workdir)
    else:
        from selfsup.evaluate.run import evaluate

        evaluate(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)


def fail(line: str, status: int = 1) -> NoReturn:
    """Ends the command with `line` on stderr. What background threads log of the same failure
    while the process winds down (orbax's unfinished writes) would only repeat it."""
    print(line, file=sys.stderr, flush=True)
    pylogging.disable(pylogging.CRITICAL)
    sys.exit(status)


def checked_workdir(value: str) -> Path:
    workdir = Path(value)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(
            f"--workdir={workdir} is a file, not a folder: pass a folder (made if missing)."
        )
    return workdir


def reported_os_error(error: BaseException) -> OSError | None:
    """`error` as an OSError if it is one with an errno, or reports one of `OS_ERROR_FIXES` in
    its text (orbax's tensorstore and TF wrap the OS's errors in their own types)."""
    if isinstance(error, OSError) and error.errno is not None:
        return error
    text = str(error)
    for code in OS_ERROR_FIXES:
        if os.strerror(code) in text:
            path = re.search(r'"(/[^"]+)"', text)
            # The folder a checkpoint was being written to, not orbax's temporary one inside it.
            path = path and re.sub(r"/[^/]*\.orbax-checkpoint-tmp.*", "", path[1])
            return OSError(code, os.strerror(code), path)
    return None


def os_error_line(error: OSError, workdir: str | None, command: str) -> str:
    """One line naming the file (else the workdir, where the commands write), the OS's reason
    and the fix (for a full disk, what re-running `command` does)."""
    where = error.filename or (f"a file in {workdir}" if workdir else "a file")
    fix = OS_ERROR_FIXES.get(error.errno, "check that path")
    if fix == _NO_SPACE and command in _RERUN:
        fix += f" ({_RERUN[command]})"
    return f"{where}: {error.strerror}: {fix}."


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _without_orbax_tracebacks(record) -> bool:
    """Orbax logs a failed background save with its traceback; the save then raises the same
    error in the command, which reports it in one line."""
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


def _is_closed_loop_error(error: BaseException | None) -> bool:
    """tensorstore reports orbax's writes done by calling into orbax's event loop; after a failed
    save has closed that loop, every late write prints "Event loop is closed" (through one of
    the hooks below), repeating an error that the command reports in one line."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _excepthook(kind, error, traceback) -> None:
    if not _is_closed_loop_error(error):
        sys.__excepthook__(kind, error, traceback)


def _unraisablehook(unraisable) -> None:
    if not _is_closed_loop_error(unraisable.exc_value):
        sys.__unraisablehook__(unraisable)


def with_default_config(argv: list[str]) -> list[str]:
    """`argv` with `--config=` the command's own config file (`DEFAULT_CONFIGS`) where it has
    one and `--config` is not given: absl knows `--config.KEY` flags only once `--config` is."""
    command = next((a for a in argv[1:] if a in COMMANDS), None)
    given = any(a == "--config" or a.startswith("--config=") for a in argv)
    if command not in DEFAULT_CONFIGS or given:
        return argv
    return [argv[0], f"--config={DEFAULT_CONFIGS[command]}", *argv[1:]]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing and the config's value checks, with a bad flag, config file, config key
    or value reported in one line."""
    argv = with_default_config(argv)
    try:
        argv = flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        if isinstance(e.__context__, ConfigError):  # From the config file.
            sys.exit(f"error: {e.__context__}")
        if isinstance(e, (KeyError, AttributeError)):
            sys.exit(f"error: {unknown_key_message(e, argv)}")
        sys.exit(f"error: {first_line(e)}")
    try:
        if _CONFIG.value is not None:
            check_config_values(_CONFIG.value)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    return argv


def value_rules(config: ml_collections.ConfigDict) -> dict[str, Rule]:
    """The rules of any command's config: the shared ones, the export's, and those of each task
    and evaluator block it has."""
    from selfsup import evaluate, export, pretext

    rule_sets = (export.VALUE_RULES, pretext.value_rules(config), evaluate.value_rules(config))
    return {name: rule for rules in (VALUE_RULES, *rule_sets) for name, rule in rules.items()}


def check_config_values(config: ml_collections.ConfigDict) -> None:
    """Every value of a command's config against its rule, as each command checks its own before
    any work; here the demo's runs are all checked before its first one starts."""
    check_values(config, value_rules(config))


def unknown_key_message(error: Exception, argv: list[str]) -> str:
    """ml_collections names only the unknown part of a key (quoted twice over): name the
    override it came from, and the config's keys closest to it."""
    text = str(error).replace("\\n", "\n")  # Its own hint follows on an escaped new line.
    part = re.sub(r"[\\'\"]", "", text).splitlines()[0].strip()
    overrides = [a[len("--config.") :].split("=")[0] for a in argv if a.startswith("--config.")]
    key = next((o for o in overrides if part in o.split(".")), part)
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    try:
        path, _, arg = (config_arg or "").partition(":")
        keys = [k for k, _ in flat_items(load_config_file(path, arg or None))]
    except ConfigError:
        keys = []
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (
        f"unknown config key {key!r}: {hint}check the spelling (the config file declares every "
        "key)."
    )


def run() -> None:
    app.run(main, flags_parser=parse_flags)

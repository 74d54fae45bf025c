"""Config loading and checks shared by every command.

Configs are Python files with `get_config(arg)` returning a locked `ConfigDict`; the CLI loads
them with `file.py[:arg]` and applies `--config.key=value` overrides. Here live the checks
that must fail before any compute, with one line naming the key and the fix.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import re
import traceback
from collections.abc import Callable
from pathlib import Path

import ml_collections

from selfsup.files import write_atomically


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def parse_runlocal(arg: str | None) -> bool:
    """Config-file argument: empty or `runlocal` (the ~2 minute CPU variant)."""
    if arg in (None, ""):
        return False
    if arg == "runlocal":
        return True
    raise ConfigError(f"unknown config argument {arg!r}: use `file.py` or `file.py:runlocal`.")


def check_minimums(config: ml_collections.ConfigDict, minimums: dict[str, float]) -> None:
    """Raises a ConfigError naming the first dotted key whose value is below its minimum."""
    for key, minimum in minimums.items():
        value = config
        for part in key.split("."):
            value = value[part]
        if value < minimum:
            raise ConfigError(
                f"config.{key}={value!r} is out of range: set --config.{key} to at least {minimum}."
            )


def resolve_model_dtype(config: ml_collections.ConfigDict, platform: str) -> None:
    """Replaces `config.model.dtype="auto"` with the compute dtype for `platform` (as
    `jax.default_backend()` names it): bfloat16 on "gpu" and "tpu", whose matrix units are built
    for it, float32 elsewhere (XLA:CPU convolves bf16 in float32: no faster, more memory).
    Pretraining resolves it before writing config.json, which so records the dtype that ran: a
    resume on the same backend matches it, one on another backend is refused as a config change
    instead of silently switching the arithmetic mid-run."""
    if config.model.dtype == "auto":
        config.model.dtype = "bfloat16" if platform in ("gpu", "tpu") else "float32"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_regex(value: object) -> bool:
    try:
        re.compile(value)
    except (re.error, TypeError):
        return False
    return True


# What a key's value must be, wherever a config has the key: a rule's name is the tail of
# the dotted key (`min_crop_area` covers `simclr.` and `finetune.`). Checked once per command,
# before any work, so a value that cannot work fails in one line instead of deep in a run.
VALUE_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "image_size": (lambda v: _is_int(v) and 8 <= v <= 4096, "a size in pixels in [8, 4096]"),
    # The stem's 64 channels times the width must leave at least one.
    "model.width": (lambda v: v >= 1 / 64, "a multiplier of at least 1/64 (e.g. 0.125)"),
    "min_crop_area": (lambda v: 0 < v <= 1, "a fraction of the image in (0, 1]"),
    "optim.warmup_epochs": (lambda v: v >= 0, "a number of epochs >= 0"),
    "optim.decay_epochs": (
        lambda v: all(not isinstance(e, str) and math.isfinite(e) and e >= 0 for e in v),
        "numbers of epochs >= 0, e.g. '(120, 160)'",
    ),
    "weight_decay_exclude": (_is_regex, "a Python regular expression, e.g. '(^|/)bias$'"),
    "minival_fraction": (lambda v: 0 < v < 1, "a fraction in (0, 1), e.g. 0.1"),
    "crop_proportion": (lambda v: 0 < v <= 1, "a fraction of the shorter side in (0, 1]"),
    "knn.ks": (
        lambda v: len(v) > 0 and all(_is_int(k) and k >= 1 for k in v),
        "integers >= 1, e.g. '(20, 200)'",
    ),
    "label_fractions": (
        lambda v: len(v) > 0 and all(0 < f <= 1 for f in v),
        "fractions in (0, 1], e.g. '(0.1, 1.0)'",
    ),
    "finetune.freeze_stages": (
        lambda v: all(n in range(5) for n in v),
        "stage counts in 0..4, e.g. '(0, 4)'",
    ),
}


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises a ConfigError naming the first key whose value breaks its `VALUE_RULES` rule."""
    for key, value in flat_items(config):
        rule = next((r for name, r in VALUE_RULES.items() if f".{key}".endswith(f".{name}")), None)
        if rule is None:
            continue
        test, requirement = rule
        try:
            ok = bool(test(value))
        except (TypeError, ValueError):  # E.g. a string where a number belongs.
            ok = False
        if not ok:
            raise ConfigError(
                f"config.{key}={value!r} is invalid: set --config.{key} to {requirement}."
            )


def flat_items(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, value) of every value that is no ConfigDict, nested ones included."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def save_config(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    write_atomically(Path(workdir, "config.json"), config.to_json_best_effort(indent=2) + "\n")


# Keys added after workdirs were written, each with the value that does what runs without the
# key did: a saved config.json that lacks one gets it, so older runs resume and evaluate as
# they were (a key under a block, e.g. `simclr.`, only where the saved config has that block).
ADDED_KEYS = {
    "corrupt_images": "error",
    "init_from": "",
    "model.dtype": "float32",
    "model.kernels": "auto",
    "simclr.solarize": 0.0,
    "simclr.color_on_device": False,
}


def read_saved_config(path: Path) -> dict:
    """A run's `config.json` as a dict, with `ADDED_KEYS` it predates filled in."""
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is cut short or damaged ({e.msg} at line {e.lineno}): restore it, or delete "
            "it and re-run the pretrain command that made this workdir (it writes it again)."
        ) from None
    for key, value in ADDED_KEYS.items():
        *blocks, leaf = key.split(".")
        node = tree
        for block in blocks:
            node = node.get(block)
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)
    return tree


def load_saved_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a pretraining run wrote into its workdir, locked."""
    path = Path(workdir, "config.json")
    if not path.exists():
        raise ConfigError(
            f"{workdir} has no config.json: --config.checkpoint must be the --workdir of a "
            "finished or running `python -m selfsup pretrain`."
        )
    tree = read_saved_config(path)
    if "task" not in tree:
        raise ConfigError(
            f"{workdir} is not a pretraining workdir (its config.json names no task; an "
            "evaluate workdir?): --config.checkpoint must be the --workdir of "
            "`python -m selfsup pretrain`."
        )
    config = ml_collections.ConfigDict(tree)
    config.lock()
    return config


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from a config file, locked (as `--config=path:arg` does).

    A config file is Python and runs as code; whatever goes wrong in it (a syntax error, an
    exception, no `get_config`, a result that is no ConfigDict) is a ConfigError naming the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass --config=configs/X.py.")
    loader = importlib.machinery.SourceFileLoader(f"selfsup_config_{path.stem}", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(
                f"config file {path} defines no get_config(arg): define one that returns an "
                "ml_collections.ConfigDict (see configs/)."
            )
        config = module.get_config(arg)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config file {path} failed: {_code_error(e, path)}: fix it.") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config in {path} returned a {type(config).__name__}, not an "
            "ml_collections.ConfigDict: return one (see configs/)."
        )
    config.lock()
    return config


def _code_error(error: Exception, path: Path) -> str:
    """`error` and where in `path` it arose, on one line (for a config file's own bug)."""
    if isinstance(error, SyntaxError):
        return f"{error.msg} at line {error.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == str(path)]
    where = f" at line {lines[-1]}" if lines else ""
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}{': ' + message if message else ''}{where}"

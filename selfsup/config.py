"""Config loading and checks shared by every command.

Configs are Python files with `get_config(arg)` returning a locked `ConfigDict`; the CLI loads
them with `file.py[:arg]` and applies `--config.key=value` overrides. Here live the checks
that must fail before any compute, with one line naming the key and the fix.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ml_collections


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


def save_config(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    Path(workdir, "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


# Keys added after workdirs were written, each with the value that does what runs without the
# key did: a saved config.json that lacks one gets it, so older runs resume and evaluate as
# they were (a key under a block, e.g. `simclr.`, only where the saved config has that block).
ADDED_KEYS = {
    "corrupt_images": "error",
    "model.dtype": "float32",
    "model.kernels": "auto",
    "simclr.solarize": 0.0,
    "simclr.color_on_device": False,
}


def read_saved_config(path: Path) -> dict:
    """A run's `config.json` as a dict, with `ADDED_KEYS` it predates filled in."""
    tree = json.loads(path.read_text())
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
    config = ml_collections.ConfigDict(read_saved_config(path))
    config.lock()
    return config


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from a config file, locked (as `--config=path:arg` does)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"selfsup_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.lock()
    return config

"""An evaluation's saved work in its workdir (`resume/`), so that the same command re-run after
a kill (SIGTERM, kill -9, the OOM killer) continues where it stopped: each encoder's frozen
features, each finished result's rows and each fine-tuning's checkpoints. Files are replaced
atomically (written aside, then renamed), so a kill never leaves half of one. All of it is
keyed by a fingerprint of what it was computed from (the config's computation keys, the
pretrained checkpoint's files and `DEFINITIONS`): a re-run under another config
(`--allow_config_change`), of a changed checkpoint or by code that computes features or rows
differently starts over, and says so."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import jax
import ml_collections
import numpy as np

from selfsup.evaluate import Row
from selfsup.files import write_atomically
from selfsup.workdir import computation_values

FOLDER = "resume"
# What saved features and rows hold beyond the config: changed whenever the code computes them
# differently for the same config and checkpoint, so that a re-run never mixes old and new work.
DEFINITIONS = (
    "features: stage1-3 Revisiting-SSL's adaptive max-pooling, pre_logits the encoder's output",
    "linear: l2 path with warm starts, refit on train + minival at all labels",
    "knn: the bank at all labels is the whole training split",
)


def fingerprint(config: ml_collections.ConfigDict, checkpoint_folder: Path) -> str:
    """A digest of the config's computation keys, of the checkpoint's files (names, sizes and
    modification times) and of `DEFINITIONS`: it changes when any of them does."""
    files = sorted(
        (str(f.relative_to(checkpoint_folder)), f.stat().st_size, f.stat().st_mtime_ns)
        for f in checkpoint_folder.rglob("*")
        if f.is_file()
    )
    text = json.dumps(
        [computation_values(config), str(checkpoint_folder.resolve()), files, DEFINITIONS],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _save(path: Path, data: str | Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


class SavedWork:
    """The saved work of the evaluation in `workdir`, for the run whose `key` (`fingerprint`)
    is given; work saved under another key is discarded, with a line saying so. In a
    multi-process run process 0 writes; every process reads."""

    def __init__(self, workdir: Path, key: str):
        self.directory = Path(workdir) / FOLDER
        self.writes = jax.process_index() == 0
        key_file = self.directory / "KEY"
        if key_file.is_file() and key_file.read_text().strip() != key:
            print(
                f"{self.directory} holds work of another config or checkpoint (or of an older "
                "version's definition of features and results): recomputing everything."
            )
            if self.writes:
                shutil.rmtree(self.directory)
        if self.writes:
            _save(key_file, key + "\n")

    def _path(self, kind: str, name: str, suffix: str = "") -> Path:
        # Only letters, digits, `.`, `-` and `_`: orbax's storage reads `%` as an escape.
        return self.directory / kind / (re.sub(r"[^\w.-]+", "_", name.replace("%", "pct")) + suffix)

    def rows(self, name: str, compute: Callable[[], list[Row]]) -> list[Row]:
        """The rows of result `name`: those saved by an earlier run, else `compute()`'s, saved."""
        path = self._path("rows", name, ".json")
        if path.is_file():
            print(f"{name}: kept from an earlier run of this command.")
            return json.loads(path.read_text())
        rows = compute()
        if self.writes:
            _save(path, json.dumps(rows))
            shutil.rmtree(self.checkpoints(name), ignore_errors=True)  # Its training is done.
        return rows

    def arrays(self, name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict:
        """The arrays `name` (e.g. an encoder's features): saved ones if they read back intact
        (each file carries a CRC, checked on reading), else `compute()`'s, saved."""
        path = self._path("arrays", name, ".npz")
        if path.is_file():
            try:
                with np.load(path) as saved:
                    arrays = {k: saved[k] for k in saved.files}
                print(f"{name}: kept from an earlier run of this command.")
                return arrays
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
                print(f"{name}: the saved copy {path} does not read back ({e}): recomputing.")
        arrays = compute()
        if self.writes:
            _save(path, lambda f: np.savez(f, **arrays))
        return arrays

    def checkpoints(self, name: str) -> Path:
        """The folder whose `checkpoints/` hold the training of result `name`."""
        return self._path("training", name)

    def finished(self) -> None:
        """Drops what only a resume needs (features, training checkpoints); the rows stay, so
        the same command re-run reports them again without computing."""
        if self.writes:
            for kind in ("arrays", "training"):
                shutil.rmtree(self.directory / kind, ignore_errors=True)

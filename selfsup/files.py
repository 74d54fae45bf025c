"""Writes that a kill cannot tear: a file that is rewritten (config.json, metrics.jsonl,
summary.json, a checkpoint's SHA256SUMS, an evaluation's saved work) is written whole to a
temporary file beside it, flushed to disk, and renamed over the old one, so a reader sees the
old file or the new one, never a part of either."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, data: str | Callable[[BinaryIO], None]) -> None:
    """Replaces `path` with `data` (text, or a function that writes the file's bytes) in one
    step; a leftover `<name>.tmp` is only ever a part."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)

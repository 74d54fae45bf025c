"""Writes that a kill cannot tear: a file that is rewritten (config.json, metrics.jsonl,
summary.json, a checkpoint's SHA256SUMS) is written whole to a temporary file beside it,
flushed to disk, and renamed over the old one, so a reader sees the old file or the new one,
never a part of either."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | Path, text: str) -> None:
    """Replaces `path` with `text` in one step (a leftover `<name>.tmp` is only ever a part)."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)

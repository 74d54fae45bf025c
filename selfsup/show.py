"""The `show-augmentations` command: a picture of what the network is fed.

`DIR/augmentations.png` has one row per training image: the original, then what the pretext
task makes of it (SimCLR's two views; relative patch position's 3x3 grid of patches), from the
first images of the training split with the augmentation seeds training derives for them. The
grid is written pixel for pixel (no axes, no resampling by the plotting library), so it shows
exactly the values the pipeline produced, quantised to 8 bits. Like every command it also
writes `summary.json`, `metrics.jsonl` and `report.md`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow as tf

from selfsup import report
from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.data.augment import to_float
from selfsup.data.sources import open_source
from selfsup.pretext import get_task
from selfsup.workdir import claim

GAP = 2  # White pixels between and around the panels.


def fit_original(image: np.ndarray, side: int) -> np.ndarray:
    """A uint8 image scaled, aspect ratio kept, so its longer side is `side` (an image already
    that size is returned unchanged), float32 in [0, 1]."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    resized = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), size, antialias=True)
    return np.clip(resized.numpy(), 0.0, 1.0)


def compose_grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Rows of [h, w, 3] panels in [0, 1] -> one uint8 image: panel j of every row in column j
    (as wide as its widest panel), each row as high as the highest panel, `GAP` px apart."""
    height = max(panel.shape[0] for row in rows for panel in row)
    widths = [max(row[j].shape[1] for row in rows) for j in range(len(rows[0]))]
    grid = np.ones(
        (len(rows) * (height + GAP) + GAP, sum(widths) + GAP * (len(widths) + 1), 3), np.float32
    )
    for i, row in enumerate(rows):
        top, left = GAP + i * (height + GAP), GAP
        for panel, width in zip(row, widths):
            grid[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
            left += width + GAP
    return np.round(grid * 255).astype(np.uint8)


def show_augmentations(
    config: ml_collections.ConfigDict, workdir: str | Path, *, num_images: int = 8
) -> Path:
    """Writes `workdir/augmentations.png` for the first `num_images` images of
    `config.train_split`; returns its path."""
    if num_images < 1:
        raise ConfigError(f"--num_images={num_images}: set it to at least 1.")
    with claim(workdir, "show-augmentations"):
        return _show(config, Path(workdir), num_images)


def _show(config: ml_collections.ConfigDict, workdir: Path, num_images: int) -> Path:
    source = open_source(config.data, data_dir=config.data_dir or None)
    source, _ = pipeline.drop_undecodable_images(
        source, [config.train_split], config.corrupt_images
    )
    task = get_task(config)
    ds = pipeline.preview_dataset(
        source,
        config.train_split,
        task.train_example,
        num_examples=num_images,
        seed=config.seed,
    )
    examples = list(pipeline.host_batches(ds, what=f"{config.data} split {config.train_split!r}"))
    # In [0, 1]: uint8 views scaled as the device scales them.
    views = [[to_float(v).numpy() for v in task.display_views(example)] for example in examples]
    side = max(view.shape[0] for row in views for view in row)
    rows = [[fit_original(example["image"], side), *row] for example, row in zip(examples, views)]
    import matplotlib.image

    path = Path(workdir, "augmentations.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, compose_grid(rows))
    # The outputs every command writes: summary, metrics and a human-readable report.
    summary = {"data": config.data, "split": config.train_split, "show/images": len(rows)}
    report.write_summary(workdir, summary)
    Path(workdir, "metrics.jsonl").write_text(json.dumps(summary) + "\n")
    Path(workdir, "report.md").write_text(
        f"# What {config.task} feeds the network: {config.data} split {config.train_split!r}\n\n"
        "Each row: a training image, then its views.\n\n![augmentations](augmentations.png)\n"
    )
    print(
        f"Wrote {path}: {len(rows)} images of {config.data} split {config.train_split!r}, "
        "each followed by what the network sees of it."
    )
    return path

"""`show-augmentations`: the grid of originals and what each pretext task feeds the network."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from selfsup import show
from selfsup.config import ConfigError, load_config_file
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.pretext import get_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "name, side, num_views",
    [
        ("simclr_cifar10.py", 16, 2),  # Two 16 px views.
        ("relpatch_cifar10.py", 52, 1),  # One 3x3 grid of 16 px patches, 2 px apart.
        ("rotation_cifar10.py", 16, 4),  # Four uint8 turns (no colour op on the host).
    ],
)
def test_grid_draws_every_original_and_what_the_network_sees(tmp_path, name, side, num_views):
    rng = np.random.default_rng(0)
    # Originals as high as a row, so the first column must show them pixel for pixel.
    originals = rng.integers(0, 256, (3, side, side, 3), np.uint8)
    for i, image in enumerate(originals):
        path = tmp_path / "data" / "train" / "c0" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
    config = load_config_file(CONFIGS / name, "runlocal")
    config.data = f"folder:{tmp_path / 'data'}"
    if "image_size" in config:
        config.image_size = 16

    path = show.show_augmentations(config, tmp_path / "out", num_images=3)
    assert path == tmp_path / "out" / "augmentations.png"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["show/images"] == 3 and summary["split"] == "train"
    assert json.loads((tmp_path / "out" / "metrics.jsonl").read_text()) == summary
    assert "![augmentations](augmentations.png)" in (tmp_path / "out" / "report.md").read_text()
    grid = np.asarray(Image.open(path).convert("RGB"))
    gap = show.GAP
    assert grid.shape == (3 * (side + gap) + gap, (1 + num_views) * (side + gap) + gap, 3)
    task = get_task(config)
    ds = pipeline.preview_dataset(
        open_source(config.data), "train", task.train_example, num_examples=3, seed=config.seed
    )
    for i, (original, example) in enumerate(zip(originals, ds.as_numpy_iterator())):
        top = gap + i * (side + gap)
        cells = [
            grid[top : top + side, gap + j * (side + gap) : gap + j * (side + gap) + side]
            for j in range(1 + num_views)
        ]
        np.testing.assert_array_equal(cells[0], original)
        views = task.display_views(example)
        assert all(v.dtype == (np.uint8 if "rotation" in name else np.float32) for v in views)
        for cell, view in zip(cells[1:], views):
            if view.dtype != np.uint8:
                view = np.round(view * 255).astype(np.uint8)
            np.testing.assert_array_equal(cell, view)
    assert (grid[:gap] == 255).all() and (grid[:, :gap] == 255).all()  # White margins.


def test_relpatch_display_rescales_each_standardised_patch_to_the_unit_range():
    config = load_config_file(CONFIGS / "relpatch_cifar10.py", "runlocal")
    patches = np.random.default_rng(0).normal(size=(9, 16, 16, 3)).astype(np.float32)
    patches[4] = 0.0  # A flat patch (standardised to zeros) is shown grey.
    (mosaic,) = get_task(config).display_views({"patches": patches})
    assert mosaic.shape == (52, 52, 3)
    first = mosaic[:16, :16]
    np.testing.assert_allclose(
        first, (patches[0] - patches[0].min()) / np.ptp(patches[0]), atol=1e-6
    )
    np.testing.assert_array_equal(mosaic[18:34, 18:34], 0.5)
    assert (mosaic[16:18] == 1).all()  # The gaps are white.


def test_original_of_another_size_is_fitted_keeping_its_aspect_ratio():
    wide = np.zeros((10, 40, 3), np.uint8)
    assert show.fit_original(wide, 20).shape == (5, 20, 3)
    square = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    np.testing.assert_allclose(show.fit_original(square, 16), square / 255, atol=1e-6)


def test_at_least_one_image():
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    with pytest.raises(ConfigError, match="num_images=0"):
        show.show_augmentations(config, "unused", num_images=0)

"""The README's "Adding a pretext task" example is real code: pasted into a module and
registered, it trains through the unchanged trainer."""

import re
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_loop import tiny_config

from selfsup.train import loop

README = Path(__file__).resolve().parents[1] / "README.md"


def rotation_module() -> types.ModuleType:
    text = README.read_text()
    source = re.search(r"```python\n(# selfsup/pretext/rotation\.py\n.*?)```", text, re.S).group(1)
    module = types.ModuleType("rotation")
    exec(compile(source, "README.md", "exec"), module.__dict__)
    return module


def test_rotation_example_turns_the_crop_by_its_label():
    config = types.SimpleNamespace(image_size=16)
    task = rotation_module().Rotation(config)
    # A left-to-right ramp: which edge ends up bright tells the number of quarter turns.
    ramp = np.tile(np.linspace(0, 255, 24, dtype=np.float32)[None, :, None], (24, 1, 3))
    seen = set()
    for i in range(40):
        example = task.train_example(tf.constant(ramp.astype(np.uint8)), tf.constant([i, 0]))
        image, turns = example["image"].numpy().mean(-1), int(example["turns"])
        edges = [image[:, -1].mean(), image[0].mean(), image[:, 0].mean(), image[-1].mean()]
        assert image.shape == (16, 16) and int(np.argmax(edges)) == turns
        seen.add(turns)
    assert seen == {0, 1, 2, 3}


def test_rotation_example_evaluates_and_displays_like_the_built_in_tasks():
    task = rotation_module().Rotation(types.SimpleNamespace(image_size=16))
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
    assert task.eval_input(image, crop_proportion=0.875, patches=False).shape == (16, 16, 3)
    example = {k: v.numpy() for k, v in task.train_example(image, tf.constant([0, 0])).items()}
    (view,) = task.display_views(example)
    assert view.shape == (16, 16, 3) and 0 <= view.min() and view.max() <= 1


@pytest.mark.slow
def test_rotation_example_trains_through_the_trainer(image_folder, tmp_path, monkeypatch):
    rotation = rotation_module()
    original = loop.get_task
    monkeypatch.setattr(
        loop,
        "get_task",
        lambda c: rotation.Rotation(c) if c.task == "rotation" else original(c),
    )
    config = tiny_config(image_folder, task="rotation")
    summary = loop.pretrain(config, tmp_path / "rotation")
    assert summary["pretrain/steps"] == 4
    # Four classes: the first losses sit near ln 4 and the run stays finite.
    assert 0.8 < summary["pretrain/loss"] < 3.0
    assert 0.0 <= summary["pretrain/pretext_accuracy"] <= 1.0

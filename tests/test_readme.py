"""The README's "Adding a pretext task" example is real code: pasted into a module and
registered, it trains through the unchanged trainer."""

import json
import re
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from test_loop import tiny_config

from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.pretext import PretextTask
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
    assert isinstance(task, PretextTask)
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
    (view,) = task.eval_views(crop_proportion=0.875).values()
    assert view(image).shape == (16, 16, 3)
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
    records = [json.loads(line) for line in (tmp_path / "rotation" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # tiny_config logs every step.
    assert summary["pretrain/loss"] == records[-1]["loss"]
    assert summary["pretrain/pretext_accuracy"] == records[-1]["pretext_accuracy"]
    # Step 1 logs the example's own loss and accuracy of the model as seeded on the first batch.
    expected = first_step_metrics(rotation.Rotation(config), config)
    assert records[0]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert records[0]["pretext_accuracy"] == pytest.approx(expected["pretext_accuracy"], abs=1e-6)


def first_step_metrics(task, config) -> dict[str, float]:
    """The task's loss and metrics outside the trainer: the model built from the run's seed,
    on the run's first training batch, as one unsharded batch."""
    source = open_source(config.data)
    ds = pipeline.train_dataset(
        source, config.train_split, task.train_example,
        local_batch_size=config.batch_size, seed=config.seed,
    )  # fmt: skip
    batch = jax.tree.map(jnp.asarray, next(ds.as_numpy_iterator()))
    model = task.build_model(nnx.Rngs(config.seed))
    rng = jax.random.fold_in(jax.random.key(config.seed), 0)  # The trainer's key for step 1.
    loss, metrics, _ = task.loss(model, batch, rng, train=True)
    return {"loss": float(loss), **{name: float(value) for name, value in metrics.items()}}

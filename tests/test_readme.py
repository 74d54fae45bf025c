"""The README's examples are real code: "Adding a pretext task", pasted into a module and
registered, trains through the unchanged trainer; "Using a pretrained encoder elsewhere" exports,
loads in PyTorch and JAX, and initialises from torchvision weights as written."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from test_cli import cli_env
from test_loop import tiny_config
from test_torchvision import HAS_TORCHVISION, TOLERANCE

import selfsup
from selfsup import pretrained
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


def readme_block(first_line: str, language: str = "python") -> str:
    """The README's fenced block that starts with `first_line`."""
    pattern = rf"```{language}\n({re.escape(first_line)}.*?)```"
    return re.search(pattern, README.read_text(), re.S).group(1)


def shell_commands(block: str) -> list[list[str]]:
    """The `python -m selfsup ...` commands of a bash block, as argument lists."""
    lines = block.replace("\\\n", " ").splitlines()
    return [
        [sys.executable, *shlex.split(line)[1:]] for line in lines if line.startswith("python ")
    ]


@pytest.mark.slow  # pretrained_run (~35 s), a pretraining and an evaluation: ~2-3 min.
def test_using_a_pretrained_encoder_elsewhere_runs_as_written(
    pretrained_run, tmp_path, monkeypatch
):
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    shutil.copytree(pretrained_run, tmp_path / "runs" / "simclr_cifar10")

    def run(args: list[str]) -> None:
        done = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    (export,) = shell_commands(readme_block("python -m selfsup export", "bash"))
    run(export)
    # JAX, run here: the run's own encoder, through the export.
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(readme_block("# JAX: the encoder without the training workdir."), namespace)
    run_encoder = selfsup.load_encoder(tmp_path / "runs" / "simclr_cifar10")
    features, images = np.asarray(namespace["features"]), namespace["images"]
    assert features.shape == (2, 512)
    np.testing.assert_array_equal(features, run_encoder(images, train=False))
    if not HAS_TORCHVISION:
        return  # The rest runs where torch is installed (CI's Python 3.11 end).
    # PyTorch, in a process of its own (tests/torchvision_side.py says why).
    torch_code = readme_block("# PyTorch: the exported encoder in torchvision's ResNet.")
    run([sys.executable, "-c", torch_code + SAVE_TORCH_FEATURES])
    images = np.load(tmp_path / "images.npy").transpose(0, 2, 3, 1)
    ours = np.asarray(run_encoder(images, train=False))
    assert np.abs(np.load(tmp_path / "features.npy") - ours).max() <= TOLERANCE
    # Initialised from the state dict PyTorch saved; a zero learning rate keeps the weights.
    pretrain, evaluate = shell_commands(
        readme_block("# Initialise from torchvision weights", "bash")
    )
    data = f"--config.data={json.loads((pretrained_run / 'config.json').read_text())['data']}"
    run(pretrain + [data, "--config.batch_size=8", "--config.image_size=16",
                    "--config.total_steps=1", "--config.optim.learning_rate=0",
                    "--config.eval_every_steps=0", "--config.online_probe_classes=0"])  # fmt: skip
    started = pretrained.read_run(tmp_path / "runs" / "from_torch").params["encoder"]
    imported = pretrained.read_weights(tmp_path / "resnet18_cifar.pth").params
    for name, value in imported.items():
        np.testing.assert_array_equal(started[name], value, err_msg=name)
    run(evaluate + ["--config.batch_size=8"])
    summary = json.loads((tmp_path / "runs" / "probe" / "summary.json").read_text())
    assert 0 <= summary["init_from/linear/test_accuracy"] <= 1
    assert "| init_from | linear |" in (tmp_path / "runs" / "probe" / "report.md").read_text()


SAVE_TORCH_FEATURES = """
import numpy as np
np.save("images.npy", images.numpy())
np.save("features.npy", features.detach().numpy())
"""

"""The trainer end to end on a tiny image folder: outputs, resume, NaN handling."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfsup.config import ConfigError, load_config_file
from selfsup.pretext import simclr
from selfsup.train import engine, loop
from selfsup.train.checkpoint import Checkpointer, load_pretrained_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# One xdist worker for the module, so the session trains `run4` and `log2_run` once, not once per
# worker.
pytestmark = pytest.mark.xdist_group("test_loop")


def tiny_config(data: str, **overrides):
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    config.data = data
    config.image_size = 16
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0  # The folder has no held-out split.
    config.online_probe_classes = 0
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def run4(image_folder, tmp_path_factory) -> Path:
    """tiny_config's finished run (checkpoints 2 and 4), trained once: a test that changes it
    copies it."""
    workdir = tmp_path_factory.mktemp("run4") / "run"
    loop.pretrain(tiny_config(image_folder), workdir)
    return workdir


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


def final_params(workdir):
    _, step, model = load_pretrained_model(workdir, loop.parallel.make_mesh())
    from flax import nnx

    return step, jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.slow
def test_pretrain_writes_outputs_and_resumes_exactly(run4, image_folder, tmp_path):
    config = tiny_config(image_folder)
    summary = json.loads((run4 / "summary.json").read_text())
    assert summary["pretrain/steps"] == 4 and np.isfinite(summary["pretrain/loss"])
    for name in ("summary.json", "metrics.jsonl", "report.md", "loss_curve.png", "config.json"):
        assert (run4 / name).exists(), name
    records = [json.loads(line) for line in (run4 / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[0]["learning_rate"] == pytest.approx(1.0 * 16 / 256)  # No warmup; lr * B/256.
    # The recipe's dtype "auto" ran, and is recorded, as float32 on the CPU.
    saved = json.loads((run4 / "config.json").read_text())
    assert summary["model/dtype"] == saved["model"]["dtype"] == "float32"

    # An interrupted run: it stopped after the step-2 checkpoint (later ones never written).
    resumed = copy_run(run4, tmp_path)
    checkpointer = Checkpointer(resumed, keep=3)
    checkpointer.manager.delete(4)
    checkpointer.close()
    resumed_summary = loop.pretrain(config, resumed)
    assert json.loads((resumed / "summary.json").read_text()) == resumed_summary
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # Steps 3-4 redone, not duplicated.

    step_full, params_full = final_params(run4)
    step_resumed, params_resumed = final_params(resumed)
    assert step_full == step_resumed == 4
    for a, b in zip(jax.tree.leaves(params_full), jax.tree.leaves(params_resumed)):
        np.testing.assert_array_equal(a, b)

    # Re-running a finished workdir does no training and keeps its results.
    again = loop.pretrain(config, resumed)
    assert again["pretrain/loss"] == resumed_summary["pretrain/loss"]


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_last_checkpoint(run4, image_folder, tmp_path, monkeypatch):
    def nan_loss(z1, z2, temperature):
        loss, metrics = nt_xent(z1, z2, temperature)
        return loss * jnp.nan, metrics

    nt_xent = simclr.nt_xent_loss
    workdir = copy_run(run4, tmp_path)  # A finished run...
    config = tiny_config(image_folder, total_steps=6)  # ...extended, and the extension diverges.
    monkeypatch.setattr(simclr, "nt_xent_loss", nan_loss)
    message = "by step 5; the last checkpoint is step 4 .*kept: 2, 4"
    with pytest.raises(engine.NonFiniteLossError, match=message):
        loop.pretrain(config, workdir, allow_config_change=True)
    assert Checkpointer(workdir, keep=3).latest_step() == 4  # Nothing good was lost.


def test_batch_size_must_divide_over_devices(image_folder, tmp_path):
    with pytest.raises(ValueError, match="batch_size=12 does not divide over 8 devices"):
        loop.pretrain(tiny_config(image_folder, batch_size=12), tmp_path)


def logged(workdir: Path) -> list[dict]:
    """metrics.jsonl without its timings, which no two runs share."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    return [{k: v for k, v in r.items() if k != "images_per_second"} for r in records]


def tensorboard_steps(workdir: Path) -> dict[str, list[int]]:
    """Each scalar's steps, over every event file in the workdir's tensorboard folder."""
    import tensorflow as tf

    steps = {}
    for path in sorted((workdir / "tensorboard").iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def log2_config(image_folder: str):
    """tiny_config (its programs) checkpointing at step 3, logging every 2 steps: a kill after
    step 3's save leaves a resume whose first log covers steps from both sides of the kill."""
    return tiny_config(image_folder, log_every_steps=2, checkpoint_every_steps=3)


@pytest.fixture(scope="module")
def log2_run(image_folder, tmp_path_factory) -> Path:
    """log2_config's finished run (checkpoints 3 and 4), trained once: tests kill copies."""
    workdir = tmp_path_factory.mktemp("log2") / "run"
    loop.pretrain(log2_config(image_folder), workdir)
    return workdir


@pytest.mark.slow
def test_a_resumed_run_logs_what_an_uninterrupted_one_does(log2_run, image_folder, tmp_path):
    killed = copy_run(log2_run, tmp_path)  # The same run, until its kill.
    shutil.rmtree(killed / "checkpoints" / "4")  # What a kill at step 4 leaves.
    loop.pretrain(log2_config(image_folder), killed)

    assert [r["step"] for r in logged(log2_run)] == [2, 4]
    assert logged(killed) == logged(log2_run)
    steps = tensorboard_steps(killed)
    assert steps["loss"] == [2, 4]  # One event per step, the killed run's included.
    assert steps == tensorboard_steps(log2_run)


@pytest.mark.slow
def test_online_probe_trains_on_labels_without_touching_the_encoder(run4, image_folder, tmp_path):
    with_probe = tiny_config(image_folder, online_probe_classes=-1)
    summary = loop.pretrain(with_probe, tmp_path / "probe")
    saved = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert saved["online_probe_classes"] == 4  # Resolved from the data (classes c0..c3).
    # Each logged step's accuracy is a count of its 16 labelled images; the summary is the last.
    logged_accuracy = [r["online_probe/accuracy"] for r in logged(tmp_path / "probe")]
    assert len(logged_accuracy) == 4 and all(a * 16 == round(a * 16) for a in logged_accuracy)
    assert summary["pretrain/online_probe/accuracy"] == logged_accuracy[-1]
    assert "linear/test_accuracy" not in summary  # The offline probe is evaluate's, never this.
    _, probed = final_params(tmp_path / "probe")
    _, plain = final_params(run4)  # The same run without the probe.
    assert "online_probe" in probed and "online_probe" not in plain
    for a, b in zip(jax.tree.leaves(probed["encoder"]), jax.tree.leaves(plain["encoder"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="online_probe_classes=7 but .* has 4 classes"):
        loop.pretrain(tiny_config(image_folder, online_probe_classes=7), tmp_path / "bad")


@pytest.mark.slow
def test_a_nonfinite_gradient_with_a_finite_loss_stops_too(image_folder, tmp_path, monkeypatch):
    def nan_gradient(z1, z2, temperature):
        loss, metrics = nt_xent(z1, z2, temperature)
        # Adds exactly 0 to the loss, but its gradient is 0 * d/dx sqrt(0) = 0 * inf = NaN.
        x = z1[0, 0]
        return loss + 0.0 * jnp.sqrt(x - jax.lax.stop_gradient(x)), metrics

    nt_xent = simclr.nt_xent_loss
    monkeypatch.setattr(simclr, "nt_xent_loss", nan_gradient)
    with pytest.raises(
        engine.NonFiniteLossError,
        match=r"loss is \d+\.\d+ and gradient norm nan by step 1; no checkpoint was saved yet, "
        r"so a re-run starts from step 0. Lower --config.optim.learning_rate \(with "
        r"--allow_config_change, as this workdir holds the config it ran\)",
    ):
        loop.pretrain(tiny_config(image_folder), tmp_path)
    assert Checkpointer(tmp_path, keep=3).latest_step() is None  # The NaN state is not saved.
    lower = tiny_config(image_folder)
    lower.optim.learning_rate /= 10
    with pytest.raises(ConfigError, match="or --allow_config_change to resume it"):
        loop.pretrain(lower, tmp_path)  # Why the message names the flag.


@pytest.mark.slow
def test_a_half_written_checkpoint_is_ignored_and_replaced(run4, image_folder, tmp_path, capsys):
    workdir = copy_run(run4, tmp_path)
    _, params_before = final_params(run4)
    # What a kill during the step-4 save leaves: orbax writes into <step>.orbax-checkpoint-tmp
    # and renames it to <step> only once complete.
    partial = workdir / "checkpoints" / "4.orbax-checkpoint-tmp"
    (workdir / "checkpoints" / "4").rename(partial)
    for path in partial.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    loop.pretrain(tiny_config(image_folder), workdir)
    out = capsys.readouterr().out
    assert "Ignoring unfinished checkpoint saves (cut short): 4.orbax-checkpoint-tmp." in out
    assert "Resuming from checkpoint at step 2/4" in out
    step, params_after = final_params(workdir)
    assert step == 4
    for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(params_after)):
        np.testing.assert_array_equal(a, b)
    assert not partial.exists()  # The completed step-4 save replaced it.


@pytest.mark.slow
def test_skip_leaves_undecodable_images_out_and_reports_them(image_folder, tmp_path, capsys):
    root = tmp_path / "images"
    shutil.copytree(image_folder.removeprefix("folder:"), root)
    broken = root / "train" / "c1" / "5.png"
    broken.write_bytes(broken.read_bytes()[:40])  # Valid PNG header, truncated body.
    config = tiny_config(f"folder:{root}", corrupt_images="skip", total_steps=2)
    summary = loop.pretrain(config, tmp_path / "run")
    assert summary["data/skipped_images"] == 1 and summary["pretrain/examples"] == 39
    assert f"Skipping 1 undecodable images of folder:{root}: {broken}." in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data/skipped_images"] == 1


@pytest.mark.slow
def test_a_metrics_line_cut_short_by_a_kill_is_written_again_on_resume(
    log2_run, image_folder, tmp_path
):
    # A kill while step 4's metrics line was being appended: its checkpoint was not saved yet.
    killed = copy_run(log2_run, tmp_path)
    shutil.rmtree(killed / "checkpoints" / "4")
    metrics = killed / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: text.rindex("\n", 0, -1) + 40])
    loop.pretrain(log2_config(image_folder), killed)

    assert [r["step"] for r in logged(killed)] == [2, 4]
    assert logged(killed) == logged(log2_run)  # Throughput, a measurement, left out.

"""Checkpoint faults: each checkpoint judged by itself (damage, checksums, not fitting the
model), readers that change nothing, divergence that is never checkpointed, and resuming from
a chosen step. `run6` is one uninterrupted run (checkpoints 2, 4, 6) that each test copies."""

import contextlib
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import flax.struct
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_loop import copy_run, final_params, logged, tiny_config

from selfsup.config import ConfigError
from selfsup.train import engine, loop
from selfsup.train.checkpoint import (
    CHECKSUMS,
    COMMIT_RECORD,
    ITEM,
    Checkpointer,
    UnverifiedCheckpoint,
    load_train_state,
    verify_checksums,
)

# One xdist worker for the module, so the session trains `run6` once, not once per worker.
pytestmark = pytest.mark.xdist_group("run6")


def settings(image_folder, **overrides):
    defaults = dict(total_steps=6, checkpoint_every_steps=2, keep_checkpoints=3)
    return tiny_config(image_folder, **{**defaults, **overrides})


@pytest.fixture(scope="module")
def run6(image_folder, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("run6") / "run"
    loop.pretrain(settings(image_folder), workdir)
    return workdir


def digest(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder, by relative path: equal means untouched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else ""
        for p in sorted(folder.rglob("*"))
        if p.name != ".lock"
    }


def assert_same_params(a_dir: Path, b_dir: Path) -> None:
    (step_a, a), (step_b, b) = final_params(a_dir), final_params(b_dir)
    assert step_a == step_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def flip_a_byte(folder: Path) -> Path:
    """Flips one byte in the middle of the folder's largest array file."""
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    return largest


def test_every_save_records_the_checksum_of_each_of_its_files(run6):
    for step in (2, 4, 6):
        folder = run6 / "checkpoints" / str(step)
        listed = dict(
            reversed(line.split("  ", 1)) for line in (folder / CHECKSUMS).read_text().splitlines()
        )
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert set(listed) == files - {CHECKSUMS} - COMMIT_RECORD
        for name, sha in listed.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha


@pytest.mark.slow  # Each case resumes and trains (6-8 CPU-s).
@pytest.mark.parametrize(
    "damage", ["empty folder", "no item folder", "one flipped byte", "empty checksum list"]
)
def test_a_damaged_checkpoint_is_set_aside_alone(run6, image_folder, tmp_path, capsys, damage):
    workdir = copy_run(run6, tmp_path)
    checkpoints = workdir / "checkpoints"
    if damage == "empty checksum list":  # A kill while an older selfsup wrote it.
        (checkpoints / "6" / CHECKSUMS).write_text("")
    if damage in ("one flipped byte", "empty checksum list"):
        flip_a_byte(checkpoints / "6")  # Restored unchecked, it would diverge.
    else:
        shutil.rmtree(checkpoints / "6" / ("default" if damage == "no item folder" else ""))
        (checkpoints / "6").mkdir(exist_ok=True)
    kept = digest(checkpoints / "4")
    loop.pretrain(settings(image_folder), workdir)

    out = capsys.readouterr().out
    said = {
        "empty folder": "is not verified (it has no SHA256SUMS)",
        "no item folder": "is damaged (default/",
        "one flipped byte": "is damaged (default/ocdbt.process_0/d/",
        "empty checksum list": "is not verified (its SHA256SUMS is empty)",
    }[damage]
    assert f"Checkpoint at step 6 {said}" in out and "step 4 is" not in out
    assert "Resuming from checkpoint at step 4/6" in out
    assert (checkpoints / "6.unreadable").is_dir()  # Kept for inspection, never deleted.
    assert digest(checkpoints / "4") == kept
    assert_same_params(workdir, run6)  # Steps 5-6 redone: the state the damaged save held.


def test_a_workdir_whose_checkpoints_are_all_damaged_is_never_started_over(
    run6, image_folder, tmp_path
):
    workdir = copy_run(run6, tmp_path)
    for step in ("2", "4", "6"):
        flip_a_byte(workdir / "checkpoints" / step)
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        loop.pretrain(settings(image_folder), workdir)
    metrics = (workdir / "metrics.jsonl").read_bytes()
    for _ in range(2):  # However often it is re-run, it refuses: never a silent step 0.
        with pytest.raises(ConfigError, match=r"no checkpoint to resume from, only ones set aside"):
            loop.pretrain(settings(image_folder), workdir)
    assert (workdir / "metrics.jsonl").read_bytes() == metrics
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "2.unreadable",
        "4.unreadable",
        "6.unreadable",
    ]


def test_a_checkpoint_that_does_not_fit_the_model_is_a_config_error(run6, image_folder, tmp_path):
    workdir = copy_run(run6, tmp_path)
    before = digest(workdir / "checkpoints")
    wider = settings(image_folder)
    wider.model.width = 2 * wider.model.width
    with pytest.raises(ConfigError, match=r"does not fit the model .*bn1/mean \(8,\) vs \(16,\)"):
        loop.pretrain(wider, workdir, allow_config_change=True)
    assert digest(workdir / "checkpoints") == before  # Nothing renamed.

    # A reader whose config.json disagrees with the checkpoints: same error, nothing touched.
    saved = json.loads((workdir / "config.json").read_text())
    saved["model"]["width"] = wider.model.width
    (workdir / "config.json").write_text(json.dumps(saved))
    before = digest(workdir)
    with pytest.raises(ConfigError, match="does not fit the model"):
        load_train_state(workdir, loop.parallel.make_mesh())
    assert digest(workdir) == before


def test_reading_a_run_skips_a_damaged_checkpoint_and_changes_nothing(run6, tmp_path, capsys):
    workdir = copy_run(run6, tmp_path)
    flip_a_byte(workdir / "checkpoints" / "6")
    before = digest(workdir)
    _, step, state = load_train_state(workdir, loop.parallel.make_mesh())
    assert step == 4 and "step 6 is damaged" in capsys.readouterr().out
    assert digest(workdir) == before
    _, _, state_4 = load_train_state(run6, loop.parallel.make_mesh(), step=4)
    for a, b in zip(
        jax.device_get(jax.tree.leaves(state)), jax.device_get(jax.tree.leaves(state_4))
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_divergence_is_never_checkpointed_and_a_chosen_step_resumes(run6, image_folder, tmp_path):
    workdir = copy_run(run6, tmp_path)
    config = settings(image_folder, checkpoint_every_steps=1, log_every_steps=100)
    config.total_steps = 10
    config.optim.learning_rate = 1e10  # Step 7's update sends the weights past the limit.
    with pytest.raises(
        engine.NonFiniteLossError,
        match=r"weights have diverged .* by step 7; the last checkpoint is step 6",
    ):
        loop.pretrain(config, workdir, allow_config_change=True)
    assert Checkpointer(workdir, read_only=True).steps() == [2, 4, 6]

    # Going back past a checkpoint (6) that was saved: it is moved aside, not deleted.
    original_6 = digest(workdir / "checkpoints" / "6")
    config = settings(image_folder)
    loop.pretrain(config, workdir, resume_step=4, allow_config_change=True)
    assert digest(workdir / "checkpoints" / "6.abandoned") == original_6
    assert_same_params(workdir, run6)  # Steps 5-6 redone from 4 as the original run did them.
    with pytest.raises(ConfigError, match=r"no checkpoint at step 3 .*\(steps: 2, 4, 6\)"):
        loop.pretrain(config, workdir, resume_step=3, allow_config_change=True)


@flax.struct.dataclass
class TrainStateBeforeExtra:
    """TrainState as checkpoints held it before the `extra` field (a task's extra state)."""

    step: jax.Array
    params: dict[str, Any]
    batch_stats: dict[str, Any]
    opt_state: Any


@pytest.mark.slow  # Resumes and trains (~9 CPU-s).
def test_a_checkpoint_saved_before_extra_state_existed_resumes_exactly(
    run6, image_folder, tmp_path
):
    workdir = copy_run(run6, tmp_path)
    mesh = loop.parallel.make_mesh()
    _, _, state = load_train_state(run6, mesh, step=4)
    window = json.loads((run6 / "checkpoints" / "4" / "metric_window.json").read_text())
    for step in ("4", "6"):
        shutil.rmtree(workdir / "checkpoints" / step)
    old = TrainStateBeforeExtra(state.step, state.params, state.batch_stats, state.opt_state)
    checkpointer = Checkpointer(workdir, keep=3)
    checkpointer.save(4, old, metric_window=window)
    checkpointer.close()
    saved = ocp.StandardCheckpointHandler().metadata(workdir / "checkpoints" / "4" / ITEM).tree
    assert (
        "extra" not in saved
        and "extra"
        in ocp.StandardCheckpointHandler().metadata(run6 / "checkpoints" / "4" / ITEM).tree
    )

    _, _, restored = load_train_state(workdir, mesh)  # Evaluate's reader, and check_fits.
    assert restored.extra == {}
    loop.pretrain(settings(image_folder), workdir)  # Resumes from 4 and trains 5-6.
    assert_same_params(workdir, run6)


class Killed(BaseException):
    """A kill -9 at a chosen write: no handler of the code under test catches it."""


@contextlib.contextmanager
def killed_at_write(name: str):
    """The first file named `name` (or a temporary file of it) opened for writing gets half of
    its first write, then the process "dies" (orbax's save thread, if that is where it runs)."""
    real_open, armed = io.open, [True]

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.close()
            raise Killed(name)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if armed[0] and set(mode) & set("wa") and Path(file).name.startswith(name):
            armed[0] = False
            return HalfWriter(f)
        return f

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io, "open", open_)
        yield


@pytest.mark.slow
def test_a_run_killed_at_any_write_ends_as_an_uninterrupted_one(run6, image_folder, tmp_path):
    # A run resumed from step 4 (a kill during steps 5-6 left no step 6) rewrites config.json
    # and metrics.jsonl, then saves step 6 (its metric window, then its checksums). Each run
    # below is killed at a later write than the one before, so each starts from what a kill at
    # the previous write left, and goes on past that write.
    workdir = copy_run(run6, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "6")
    for name in ("config.json", "metrics.jsonl", "metric_window.json", CHECKSUMS):
        with contextlib.suppress(Killed), killed_at_write(name):
            loop.pretrain(settings(image_folder), workdir)
        assert Checkpointer(workdir, read_only=True).steps() == [2, 4], name  # No step 6.
    loop.pretrain(settings(image_folder), workdir)  # The same command.
    assert_same_params(workdir, run6)
    assert logged(workdir) == logged(run6)  # Line for line: no record lost or doubled.


@pytest.mark.parametrize(
    "listing, said",
    [
        (None, "it has no SHA256SUMS"),
        ("", "its SHA256SUMS is empty"),
        ("half", "its SHA256SUMS is cut short"),  # A kill mid-line.
        ("all but the last line", "its SHA256SUMS is cut short (no checksum of "),
    ],
)
def test_a_missing_empty_or_torn_checksum_list_is_not_verified(run6, tmp_path, listing, said):
    folder = Path(shutil.copytree(run6 / "checkpoints" / "6", tmp_path / "6"))
    lines = (folder / CHECKSUMS).read_text().splitlines(keepends=True)
    if listing is None:
        (folder / CHECKSUMS).unlink()
    else:
        text = {"": "", "half": "".join(lines)[: len("".join(lines)) // 2]}.get(listing)
        (folder / CHECKSUMS).write_text("".join(lines[:-1]) if text is None else text)
    with pytest.raises(UnverifiedCheckpoint, match=re.escape(said)):
        verify_checksums(folder)


def test_resuming_a_chosen_damaged_step_is_one_line_naming_the_intact_ones(
    run6, image_folder, tmp_path
):
    workdir = copy_run(run6, tmp_path)
    flip_a_byte(workdir / "checkpoints" / "4")
    before = digest(workdir / "checkpoints")
    message = (
        r"the checkpoint at step 4 in .*checkpoints is damaged \(.* \(checksum mismatch\)\): "
        r"pass --resume_step with an intact one, .*\(intact steps: 2, 6\)\.$"
    )
    with pytest.raises(ConfigError, match=message):
        loop.pretrain(settings(image_folder), workdir, resume_step=4)
    assert digest(workdir / "checkpoints") == before  # Nothing moved: the user chose that step.


def test_a_finished_runs_torn_last_metrics_line_is_said_and_its_summary_kept(
    run6, image_folder, tmp_path, capsys
):
    workdir = copy_run(run6, tmp_path)
    metrics = workdir / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # Step 6's line.
    before = {name: (workdir / name).read_bytes() for name in ("metrics.jsonl", "summary.json")}
    summary = loop.pretrain(settings(image_folder), workdir)  # Finished: nothing to train.
    out = capsys.readouterr().out
    assert f"{metrics} line 6, the last, is cut short (a kill while it was written)" in out
    assert "no record of the last step, 6 (its line was cut short), and the run is finished" in out
    assert {name: (workdir / name).read_bytes() for name in before} == before
    assert summary == json.loads(before["summary.json"])

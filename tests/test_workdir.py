"""Workdir safety: one live run per workdir (a dead run's lock never blocks), no command
writing into a workdir another kind of command made, and no resuming a workdir under a
different config unless asked."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.config import (
    ADDED_KEYS,
    ConfigError,
    load_config_file,
    load_saved_config,
    resolve_model_dtype,
    save_config,
)
from selfsup.evaluate.run import evaluate
from selfsup.train import loop
from selfsup.train.checkpoint import load_train_state
from selfsup.workdir import (
    COMMAND_FILE,
    LOCK_FILE,
    check_made_by,
    check_same_config,
    claim,
    made_by,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HOLD_LOCK = (
    "import sys; from selfsup.workdir import claim; c = claim(sys.argv[1], 'pretrain'); "
    "c.__enter__(); "
    "print('held', flush=True); sys.stdin.read()"
)


def test_a_live_runs_workdir_is_refused_and_a_killed_runs_is_not(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert holder.stdout.readline() == "held\n"
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    with pytest.raises(ConfigError, match=rf"in use by a running job \(pid {holder.pid} on "):
        loop.pretrain(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # Refused before any work.

    holder.send_signal(signal.SIGKILL)  # Dies holding the lock; its lock file stays behind.
    holder.wait(timeout=30)
    assert (tmp_path / LOCK_FILE).exists()
    with claim(tmp_path, "pretrain"):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(ConfigError, match="in use by a running job"):
            with claim(tmp_path, "pretrain"):  # Another claim while this one lives.
                pass
    with claim(tmp_path, "pretrain"):  # Released at the end of the block.
        pass


def test_a_workdir_of_another_config_is_refused_unless_allowed(image_folder, tmp_path):
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    config.data = image_folder
    save_config(config, tmp_path)  # What an earlier run left.
    check_same_config(config, tmp_path, allow_change=False)  # Same config: resumes.

    config.log_every_steps = 7  # Reporting and data location may change...
    config.data_dir = "elsewhere"
    check_same_config(config, tmp_path, allow_change=False)
    config.optim.learning_rate = 0.5  # ...what is computed may not.
    config.total_steps = 90
    with pytest.raises(ConfigError) as error:
        check_same_config(config, tmp_path, allow_change=False)
    message = str(error.value)
    assert "optim.learning_rate: 1.0 -> 0.5; total_steps: 60 -> 90" in message
    assert "--allow_config_change" in message and "log_every_steps" not in message
    assert "\n" not in message
    check_same_config(config, tmp_path, allow_change=True)

    with pytest.raises(ConfigError, match="holds a run of a different config"):
        loop.pretrain(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # Refused before any work.


def test_a_fresh_workdir_takes_any_config(tmp_path):
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    check_same_config(config, tmp_path / "new", allow_change=False)


@pytest.mark.parametrize("name", ["simclr_cifar10.py", "relpatch_cifar10.py"])
def test_a_workdir_written_before_a_key_was_added_resumes_and_loads_with_its_default(
    name, tmp_path
):
    config = load_config_file(CONFIGS / name, "runlocal")
    resolve_model_dtype(config, "cpu")  # As pretraining does before comparing: "auto" ran float32.
    save_config(config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ADDED_KEYS:  # What a run written before these keys existed left.
        *blocks, leaf = key.split(".")
        node = saved
        for block in blocks:
            node = node.get(block, {})
        node.pop(leaf, None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_same_config(config, tmp_path, allow_change=False)
    loaded = load_saved_config(tmp_path).to_json_best_effort()
    assert json.loads(loaded) == json.loads(config.to_json_best_effort())
    # A value other than the added default is still a change.
    config.corrupt_images = "skip"
    with pytest.raises(ConfigError, match="corrupt_images: 'error' -> 'skip'"):
        check_same_config(config, tmp_path, allow_change=False)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_command_refuses_a_workdir_another_kind_of_command_made(image_folder, tmp_path):
    run = tmp_path / "run"
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    config.update(dict(data=image_folder, image_size=16, batch_size=16, total_steps=1))
    config.update(dict(eval_every_steps=0, online_probe_classes=0))
    loop.pretrain(config, run)
    assert made_by(run) == "pretrain"
    before = tree(run)
    probe = load_config_file(CONFIGS / "linear_probe.py", "runlocal")
    probe.checkpoint = str(run)
    with pytest.raises(ConfigError, match="--workdir=.* holds the output of `python -m selfsup "
                       "pretrain`, not of `evaluate`: pass a new or empty folder"):  # fmt: skip
        evaluate(probe, run)
    assert tree(run) == before  # Nothing written: config.json, metrics, summary all kept.

    evaluation = tmp_path / "evaluation"
    with claim(evaluation, "evaluate"):
        pass
    assert (evaluation / COMMAND_FILE).read_text() == "evaluate\n"
    with pytest.raises(ConfigError, match="holds the output of `python -m selfsup evaluate`"):
        loop.pretrain(config, evaluation)
    with pytest.raises(ConfigError, match="--config.checkpoint=.* holds the output of `python "
                       "-m selfsup evaluate`, not of `pretrain`: pass a folder that"):  # fmt: skip
        load_train_state(evaluation, loop.parallel.make_mesh())


@pytest.mark.parametrize(
    "files, command",
    [
        ({"checkpoints/2/x": ""}, "pretrain"),
        ({"summary.json": '{"pretrain/steps": 4}'}, "pretrain"),
        ({"summary.json": '{"evaluate/wall_seconds": 3.0}'}, "evaluate"),
        ({"summary.json": '{"demo/wall_seconds": 3.0}'}, "demo"),
        ({"summary.json": '{"show/images": 8}'}, "show-augmentations"),
        ({"notes.txt": "mine"}, None),
        ({}, None),
    ],
)
def test_workdirs_that_predate_the_command_file_are_recognised(files, command, tmp_path):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert made_by(tmp_path) == command


def test_an_empty_command_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / COMMAND_FILE).write_text("")  # A kill while an older selfsup wrote it.
    message = (
        f"{tmp_path / COMMAND_FILE} is empty (cut short when written), so which command made "
        f"{tmp_path} is unknown: write the one that did (pretrain, evaluate, export, demo, "
        "show-augmentations) into it, or pass another --workdir."
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_made_by(tmp_path, "pretrain", flag="--config.checkpoint")


def test_a_workdir_inside_or_holding_another_commands_workdir_is_refused(pretrained_run, tmp_path):
    before = tree(pretrained_run)
    probe = load_config_file(CONFIGS / "linear_probe.py", "runlocal")
    probe.checkpoint = str(pretrained_run)
    with pytest.raises(ConfigError) as error:
        evaluate(probe, pretrained_run / "checkpoints")
    assert str(error.value) == (
        f"--workdir={pretrained_run / 'checkpoints'} is inside {pretrained_run}, the workdir of "
        "`python -m selfsup pretrain`: pass a folder outside any other command's workdir."
    )
    with pytest.raises(ConfigError, match=f"holds {pretrained_run}, the workdir of `python -m "):
        evaluate(probe, pretrained_run.parent)
    assert tree(pretrained_run) == before  # Nothing written into the run.

    evaluation = tmp_path / "evaluation"
    with claim(evaluation, "evaluate"):
        pass
    config = load_config_file(CONFIGS / "simclr_cifar10.py", "runlocal")
    with pytest.raises(ConfigError, match="is inside .*evaluation, the workdir of `python -m "):
        loop.pretrain(config, evaluation / "more")
    assert not (evaluation / "more").exists()
    with pytest.raises(ConfigError, match="holds .*evaluation, the workdir of `python -m "):
        loop.pretrain(config, tmp_path)
    # A composing command's parts nest in the workdir it holds.
    with claim(tmp_path / "demo", "demo"), claim(tmp_path / "demo" / "simclr", "pretrain"):
        pass
    with claim(tmp_path / "demo", "demo"):  # And its re-run resumes them.
        pass

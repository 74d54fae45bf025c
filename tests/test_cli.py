"""The command line as a user runs it: pretrain then evaluate on a folder of images, and the
one-line errors for bad input."""

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pytest
import tensorflow as tf
from conftest import QUICK_COMPILE

from selfsup import parallel
from selfsup.config import load_config_file, save_config
from selfsup.train import loop
from selfsup.train.checkpoint import load_train_state

ROOT = Path(__file__).resolve().parents[1]


def foreground_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env(devices: int = 2) -> dict[str, str]:
    """The test session's environment (its compile cache included: tests/conftest.py) with
    `devices` fake CPU devices."""
    return {
        **os.environ,
        "XLA_FLAGS": f"{QUICK_COMPILE} --xla_force_host_platform_device_count={devices}",
    }


def selfsup(*args: str, cwd: Path, devices: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args],
        cwd=cwd,
        env=cli_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )


def selfsup_here(*args: str, cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """`selfsup(*args)` in this process: the command's own flag parsing, checks and error
    lines, without a new interpreter's imports and compiles. Process-wide state the command
    sets (flags, hooks, the Ctrl-C handler, logging) is put back. This process's backend is up,
    so JAX's cluster detection answers as on one machine without a cluster, and the commands'
    allocator setting (`parallel.reuse_step_memory`) is left out."""
    from absl import flags

    from selfsup import cli

    def no_cluster(*args, **kwargs):
        raise ValueError(parallel._NO_CLUSTER)

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["selfsup", *args])  # Where config_flags finds overrides.
    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    monkeypatch.setattr(parallel, "reuse_step_memory", lambda: None)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    sigint, stdout, stderr, code = signal.getsignal(signal.SIGINT), io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            cli.main(cli.parse_flags(sys.argv))
    except SystemExit as e:  # The interpreter prints a message it is given, and exits with 1.
        code = 1 if isinstance(e.code, str) else e.code or 0
        stderr.write(f"{e.code}\n" if isinstance(e.code, str) else "")
    finally:
        signal.signal(signal.SIGINT, sigint)
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # The overrides config_flags defined in parsing.
        logging.disable(logging.NOTSET)  # `cli.fail` silences logging as the process ends.
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def assert_one_error_line(run: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert run.returncode == code, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    # One error line, the last thing written (TF's start-up notices may precede it).
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == run.stderr.strip().splitlines()[-1:], run.stderr[-2000:]
    assert message in errors[0]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 20)):
        for i in range(n):
            # Two classes a linear probe can tell apart: dark and bright images.
            label = i % 2
            image = rng.integers(0, 128, (16, 16, 3)) + 127 * label
            path = root / split / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(image.astype(np.uint8)).numpy())
    return root


# The finished pretraining run that the SIGKILL test's killed command must end equal to, and
# that the evaluate command reads.
KILL_OVERRIDES = dict(
    batch_size=16,
    image_size=16,
    total_steps=16,
    log_every_steps=3,  # Not a divisor of the checkpoint interval: windows span a kill.
    checkpoint_every_steps=4,
    eval_every_steps=0,
)


@pytest.fixture(scope="module")
def finished_run(image_root, tmp_path_factory) -> Path:
    """Trained once, in this process, with the SIGKILL test's command's settings. Its tests share
    an xdist worker."""
    config = load_config_file(ROOT / "configs" / "simclr_cifar10.py", "runlocal")
    config.update(dict(data=f"folder:{image_root}", eval_split="val", **KILL_OVERRIDES))
    workdir = tmp_path_factory.mktemp("finished") / "run"
    loop.pretrain(config, workdir)
    return workdir


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")
def test_evaluate_a_pretraining_run_on_a_folder(finished_run, tmp_path):
    """The pretrain command's success is the SIGKILL test's re-run."""
    run = selfsup(
        "evaluate",
        f"--config={ROOT / 'configs' / 'transfer.py'}:runlocal",
        f"--workdir={tmp_path / 'transfer'}",
        f"--config.checkpoint={finished_run}",
        "--config.batch_size=16",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "transfer"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint_step"] == 16 and summary["eval_split"] == "val"
    # Brightness separates the classes: any encoder, pretrained or random, probes well.
    assert summary["linear/test_accuracy"] >= 0.9
    assert summary["random_init/linear/test_accuracy"] >= 0.9
    # Every accuracy is a count of the 20 val images, as metrics.jsonl's rows have them.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracies = sorted(v for k, v in summary.items() if k.endswith("/test_accuracy"))
    assert accuracies == sorted(r["test_accuracy"] for r in rows)
    assert all(round(a * 20) == a * 20 for a in accuracies)
    # 48 training images: minival takes 2 per class; 10% of the other 44 is 2 per class; at
    # 100% the probe is refit on all 48 and they are the k-NN bank.
    assert summary["minival_examples"] == 4
    assert summary["linear/num_labels"] == summary["knn/k20/num_labels"] == 48
    assert summary["knn/k20/labels10%/num_labels"] == 4
    assert summary["knn/k20/labels10%/k"] == 4  # k capped at the number of labels.
    # Every fine-tune row carries its settings; the 10% subset shrinks the batch to 4.
    for prefix in ("finetune/freeze0", "random_init/finetune/freeze4/labels10%"):
        assert summary[f"{prefix}/steps"] == 6
    assert summary["finetune/freeze0/batch_size"] == 32
    assert summary["finetune/freeze4/labels10%/batch_size"] == 4
    assert summary["finetune/freeze0/learning_rate"] == pytest.approx(0.1 * 32 / 256)
    report = (out / "report.md").read_text()
    assert "| pretrained | finetune/freeze0 |" in report and "| random_init | linear |" in report
    assert (out / "accuracy_vs_labels.png").exists() and (out / "frozen_vs_finetuned.png").exists()
    # 2 encoders x 2 fractions x (linear + 2 k-NN + 2 freeze depths).
    assert len(rows) == 20


@pytest.mark.slow
@pytest.mark.xdist_group("builtin")  # The worker that prepares builtin_data_dir for the session.
def test_demo_runs_end_to_end_in_its_runlocal_form(builtin_data_dir, tmp_path):
    run = selfsup(
        "demo",
        f"--config={ROOT / 'configs' / 'demo.py'}:runlocal",
        f"--config.data_dir={builtin_data_dir}",
        f"--workdir={tmp_path / 'demo'}",
        # The command's path at a fraction of runlocal's cost: two steps, probes on the 2,000
        # test images (not 10,000 + 2,000; each encoder's features are most of the cost) in
        # batches of 1,000, and one strong L2, which L-BFGS solves in a few iterations. Smaller
        # inputs: SimCLR's 16 px crops, and relative-patch's 8 px patches in a 36 px crop (not 16
        # in 72), which its probe's features see whole (the 2,000 images at 72 px cost ~20 CPU-s).
        *(
            f"--config.tasks.{task}.{key}"
            for task in ("simclr", "relpatch")
            for key in (
                "pretrain.total_steps=2",
                "probe.train_split=test",
                "probe.batch_size=1000",
                "probe.linear.l2_grid=(1.0,)",
            )
        ),
        "--config.tasks.simclr.pretrain.image_size=16",
        *(
            f"--config.tasks.relpatch.pretrain.relpatch.{key}"
            for key in ("resize_size=40", "crop_size=36", "patch_size=8", "eval_smaller_size=28")
        ),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for task in ("simclr", "relpatch"):
        assert (
            summary[f"{task}/pretrain/steps"] == 2 and summary[f"{task}/data"] == "builtin:shapes"
        )
        assert (tmp_path / "demo" / task / "pretrain" / "loss_curve.png").exists()
    assert summary["relpatch/features"] == "image" and summary["simclr/features"] == "image"
    report = (tmp_path / "demo" / "report.md").read_text()
    for task, heldout in (("simclr", "contrast_accuracy"), ("relpatch", "pretext_accuracy")):
        [task_row] = [
            line for line in report.splitlines() if line.startswith(f"| {task} | image |")
        ]
        assert f"| {summary[f'{task}/pretrain/heldout/{heldout}']:.4g} |" in task_row
        for encoder, key in ((task, "linear"), (f"random init ({task})", "random_init/linear")):
            accuracy = summary[f"{task}/{key}/test_accuracy"]
            # Counted over all 2,000 test images of builtin:shapes, and the row of the table.
            assert accuracy * 2000 == pytest.approx(round(accuracy * 2000), abs=1e-6)
            row = f"| {encoder} | image | {accuracy:.4g} |"
            assert row in report and row in run.stdout
    assert "![linear probe and k-NN of every encoder](accuracy.png)" in report
    assert (tmp_path / "demo" / "accuracy.png").stat().st_size > 10_000


BROKEN_CONFIGS = {
    "syntax.py": "def get_config(:\n    pass\n",
    "raises.py": "def get_config(arg=None):\n    raise RuntimeError('boom')\n",
    "returns_dict.py": "def get_config(arg=None):\n    return {'seed': 0}\n",
    "no_get_config.py": "SEED = 0\n",
}


def bad_input_setup(tmp_path: Path) -> None:
    """What the bad-input cases point at: broken config files, a file where a folder belongs,
    workdirs of a pretraining run and of an evaluation (their config.json alone: the commands
    must refuse them before reading anything else), and a folder with an empty .jpg."""
    for name, text in BROKEN_CONFIGS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "file").write_text("not a folder")
    for name, config_file in (
        ("pretrained", "simclr_cifar10.py"),
        ("evaluated", "linear_probe.py"),
    ):
        config = load_config_file(ROOT / "configs" / config_file)
        (tmp_path / name).mkdir()
        save_config(config, tmp_path / name)
    images = tmp_path / "images" / "train" / "cat"
    images.mkdir(parents=True)
    images.joinpath("a.png").write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
    images.joinpath("empty.jpg").write_bytes(b"")


SIMCLR = "--config=CONFIG"
PROBE = f"--config={ROOT / 'configs' / 'linear_probe.py'}"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["pretrain", SIMCLR, "--workdir=W", "--config.nonexistent_key=1"], 1,
         "unknown config key 'nonexistent_key': check the spelling (the config file declares "
         "every key)."),
        (["pretrain", SIMCLR, "--workdir=W", "--config.data=s3:x"], 1, "unknown data spec 's3:x'"),
        (["pretrain", SIMCLR, "--workdir=W", "--config.data=folder:/no/such/dir"], 1,
         "does not exist"),
        (["evaluate", PROBE, "--workdir=W"], 1, "--config.checkpoint=PRETRAIN_WORKDIR"),
        (["pretrain", "--workdir=W"], 1, "needs --config"),
        (["evaluate", f"--config={ROOT / 'configs' / 'transfer.py'}", "--workdir=W",
          "--config.checkpoint=pretrained", "--config.finetune.freeze_stages=(0, 5)"], 1,
         "error: config.finetune.freeze_stages=(0, 5) is invalid: set "
         "--config.finetune.freeze_stages to depths of pretrained's ResNet-18 (cifar stem, width "
         "1), each in [0, 4] (0 trains all, 4 the head only), e.g. '(0, 4)'."),
        (["pretrain", SIMCLR, "--workdir=W", "--config.batch_size=sixteen"], 1, "batch_size"),
        (["pretrain", SIMCLR, "--workdir=W", "--config.log_every_steps=0"], 1,
         "config.log_every_steps=0 is invalid: set --config.log_every_steps to an integer in [1, "
         "2147483647]."),
        # A config file is Python: whatever is wrong with it is one line naming it.
        (["pretrain", "--config=syntax.py", "--workdir=W"], 1,
         "error: config file syntax.py failed: invalid syntax at line 1: fix it."),
        (["pretrain", "--config=raises.py", "--workdir=W"], 1,
         "error: config file raises.py failed: RuntimeError: boom at line 2: fix it."),
        (["pretrain", "--config=returns_dict.py", "--workdir=W", "--config.seed=1"], 1,
         "error: get_config in returns_dict.py returned a dict, not an ml_collections.ConfigDict"),
        (["pretrain", "--config=no_get_config.py", "--workdir=W"], 1,
         "error: config file no_get_config.py defines no get_config(arg)"),
        # Values that cannot work, refused before any work: here those whose command-line
        # form parses (a huge integer, a regex, a tuple); tests/test_config.py has every rule.
        (["pretrain", SIMCLR, "--workdir=W", "--config.seed=99999999999999999999999"], 1,
         "error: config.seed=99999999999999999999999 is invalid: set --config.seed to an "
         "integer in [0, 4294967295]."),
        (["pretrain", SIMCLR, "--workdir=W", "--config.optim.weight_decay_exclude=("], 1,
         "config.optim.weight_decay_exclude='(' is invalid"),
        (["pretrain", SIMCLR, "--workdir=W", "--config.optim.decay_epochs=(5,x)"], 1,
         "config.optim.decay_epochs=('(5,x)',) is invalid"),
        (["evaluate", PROBE, "--workdir=W", "--config.checkpoint=pretrained",
          "--config.layers=stage5"], 1,
         "error: config.layers=('stage5',): use features of this encoder from ['stage1', "
         "'stage2', 'stage3', 'pre_logits'] (pre_logits: its output) or 'all_stages', e.g. "
         "--config.layers=all_stages."),
        # Paths that are the wrong kind of thing.
        (["pretrain", SIMCLR, "--workdir=file"], 1,
         "error: --workdir=file is a file, not a folder: pass a folder (made if missing)."),
        (["evaluate", PROBE, "--workdir=W", "--config.checkpoint=pretrained",
          "--config.features=patches"], 1,
         "error: config.features='patches' is not an input that simclr offers: use one of "
         "['image']."),
        (["pretrain", SIMCLR, "--workdir=W", "--config.data=folder:images"], 1,
         "error: images/train/cat/empty.jpg in folder:images is not a usable image (an empty "
         "file): remove or replace it, or set --config.corrupt_images=skip"),
    ],
)  # fmt: skip
def test_bad_input_fails_with_one_line(args, code, message, tmp_path, monkeypatch):
    """In this process; `test_a_command_process_ends_on_bad_input_in_one_line` runs each way
    out as a command."""
    bad_input_setup(tmp_path)
    config = f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal"
    args = [config if a == SIMCLR else a for a in args]
    assert_one_error_line(selfsup_here(*args, cwd=tmp_path, monkeypatch=monkeypatch), code, message)


@pytest.mark.parametrize(
    "args, message",
    [
        # Refused in parsing the command line, before the command starts.
        (["pretrain", SIMCLR, "--workdir=W", "--config.batch_sise=8"],
         "unknown config key 'batch_sise': did you mean batch_size or model.patch_size? check the "
         "spelling"),
        # Refused by the command: multi-process flags (JAX's cluster set-up, which only a fresh
        # process can run), evaluate's and export's own checks.
        (["pretrain", SIMCLR, "--workdir=W", "--num_processes=2"],
         "needs all of --coordinator_address"),
        # The evaluate command's imports make it a slow start (about 9 CPU-s).
        pytest.param(["evaluate", PROBE, "--workdir=W", "--config.checkpoint=evaluated"],
                     "error: evaluated is not a pretraining workdir", marks=pytest.mark.slow),
        (["export", f"--config={ROOT / 'configs' / 'export.py'}", "--workdir=W"],
         "error: export needs a pretraining run: pass --config.checkpoint=WORKDIR."),
    ],
)  # fmt: skip
def test_a_command_process_ends_on_bad_input_in_one_line(args, message, tmp_path):
    bad_input_setup(tmp_path)
    config = f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal"
    run = selfsup(*[config if a == SIMCLR else a for a in args], cwd=tmp_path)
    assert_one_error_line(run, 1, message)


@pytest.mark.parametrize(
    "error, line, command",
    [
        (OSError(errno.EROFS, "Read-only file system", "/runs/x"),
         "/runs/x: Read-only file system: pass a --workdir on a writable file system.", "pretrain"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/train/a.png"),
         "/data/train/a.png: Permission denied: give this user access to it, or pass another "
         "path.", "pretrain"),
        # What orbax's tensorstore raised when the disk filled during a checkpoint save.
        (ValueError('RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local '
                    'file "/runs/x/checkpoints/2.orbax-checkpoint-tmp/default.orbax-checkpoint-'
                    'tmp/ocdbt.process_0/": Failed to write 136664 bytes to file 18: No space '
                    "left on device [os_error_code='28']"),
         "/runs/x/checkpoints: No space left on device: free space there or pass a --workdir "
         "elsewhere, then re-run the same command (it resumes from its last checkpoint).",
         "pretrain"),
        # An export has no checkpoint to resume from: it says what its re-run does.
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x/encoder.safetensors"),
         "/runs/x/encoder.safetensors: No space left on device: free space there or pass a "
         "--workdir elsewhere, then re-run the same command (it exports again, from the start).",
         "export"),
        # TF's TensorBoard writer names no file.
        (tf.errors.ResourceExhaustedError(None, None, "tensorboard: No space left on device"),
         "a file in /runs/x: No space left on device: free space there", "pretrain"),
    ],
)  # fmt: skip
def test_a_full_or_read_only_disk_is_one_line_naming_the_path(error, line, command):
    from selfsup import cli

    assert cli.os_error_line(cli.reported_os_error(error), "/runs/x", command).startswith(line)


@pytest.mark.parametrize(
    "command, key, value", [("export", "checkpoint", "runs/x"), ("demo", "data_dir", "/data")]
)
def test_a_command_with_one_config_file_takes_it_without_config(command, key, value, monkeypatch):
    from absl import flags

    from selfsup import cli

    argv = ["selfsup", command, "--workdir=W", f"--config.{key}={value}"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv.
    try:
        cli.parse_flags(argv)
        default = load_config_file(cli.DEFAULT_CONFIGS[command])
        assert cli._CONFIG.value.to_dict() == {**default.to_dict(), key: value}
    finally:
        flags.FLAGS.unparse_flags()


@pytest.mark.slow
def test_a_disk_that_refuses_writes_ends_in_one_line(image_root, tmp_path):
    # Writes past 100 KiB fail with EFBIG, as writes to a full disk fail with ENOSPC.
    command = [
        "bash", "-c", "trap '' XFSZ; ulimit -f 100; exec \"$@\"", "bash",
        sys.executable, "-m", "selfsup", "pretrain",
        f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal",
        f"--workdir={tmp_path / 'run'}", f"--config.data=folder:{image_root}",
        "--config.batch_size=16", "--config.image_size=16", "--config.total_steps=2",
        "--config.eval_every_steps=0",
    ]  # fmt: skip
    env = {k: v for k, v in cli_env().items() if not k.startswith("JAX_")}  # No cache writes.
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'run' / 'checkpoints'}: File too large: raise the file size limit "
        "(ulimit -f) or pass a --workdir elsewhere."
    )
    assert sum(line.startswith("error:") for line in run.stderr.splitlines()) == 1


def signalled_in_training(command: list[str], cwd: Path, signum: int, step: int) -> tuple[str, str]:
    """(stdout, stderr) of `command` sent `signum` once it logged `step`, a foreground command
    (a shell without job control starts background jobs with Ctrl-C ignored, and the command
    then respects that; a user's Ctrl-C reaches a foreground command, which this makes it,
    however pytest itself was started)."""
    process = subprocess.Popen(command, cwd=cwd, env=cli_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=foreground_ctrl_c)  # fmt: skip
    stdout = []
    for line in process.stdout:  # Training is under way once steps are logged.
        stdout.append(line)
        if line.startswith(f"step {step}/"):
            break
    process.send_signal(signum)
    rest, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum and "Traceback" not in stderr, stderr[-2000:]
    return "".join(stdout) + rest, stderr


def saved_step(stderr: str, signal_name: str) -> int:
    """The step that a training run stopped by `signal_name` says it saved, in its last line."""
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"{signal_name}: saved a checkpoint at step (\d+)/400; re-run the same "
                         r"command to resume\.", last)  # fmt: skip
    assert match, stderr[-2000:]
    return int(match.group(1))


@pytest.mark.slow
def test_signals_checkpoint_in_training_the_rerun_resumes_and_ctrl_c_before_stops(
    image_root, tmp_path
):
    command = [
        sys.executable, "-m", "selfsup", "pretrain",
        f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal",
        f"--workdir={tmp_path / 'run'}", f"--config.data=folder:{image_root}",
        "--config.eval_split=val", "--config.batch_size=16", "--config.image_size=16",
        "--config.total_steps=400", "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=1000",
    ]  # fmt: skip
    # Ctrl-C in training saves the step under way.
    _, stderr = signalled_in_training(command, tmp_path, signal.SIGINT, 3)
    first = saved_step(stderr, "SIGINT")
    assert 3 <= first < 400
    # The same command resumes from it, and SIGTERM saves the step under way too.
    stdout, stderr = signalled_in_training(command, tmp_path, signal.SIGTERM, first + 3)
    assert f"Resuming from checkpoint at step {first}/400" in stdout, stdout
    second = saved_step(stderr, "SIGTERM")
    assert first + 3 <= second < 400
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [first, second]

    # Before training (here: once the run holds its workdir), Ctrl-C stops at once, in one line.
    process = subprocess.Popen(command[:5] + [f"--workdir={tmp_path / 'early'}"] + command[6:],
                               cwd=tmp_path, env=cli_env(), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=foreground_ctrl_c)  # fmt: skip
    while not (tmp_path / "early" / ".lock").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted (Ctrl-C): re-run the same command to continue (pretrain resumes "
        "from its last checkpoint, evaluate keeps the features and results it finished)."
    )


@pytest.mark.slow  # A command's start-up, TF's pipeline and matplotlib: about 8 CPU-s.
def test_show_augmentations_writes_the_grid(image_root, tmp_path):
    run = selfsup(
        "show-augmentations",
        f"--config={ROOT / 'configs' / 'relpatch_cifar10.py'}:runlocal",
        f"--workdir={tmp_path / 'show'}",
        f"--config.data=folder:{image_root}",
        "--num_images=4",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    path = tmp_path / "show" / "augmentations.png"
    assert f"Wrote {path}: 4 images of folder:{image_root} split 'train'" in run.stdout
    # 4 rows of 52 px (a 3x3 grid of 16 px patches, 2 px apart), 2 px gaps; two columns.
    assert plt.imread(path).shape[:2] == (4 * 54 + 2, 2 * 54 + 2)


@pytest.mark.slow
def test_a_corrupt_image_fails_with_one_line_naming_it(image_root, tmp_path, monkeypatch):
    """In this process (`test_a_command_process_ends_on_bad_input_in_one_line` has the command's
    way out on bad input). 16 training images, all in the first batch: it fails on that batch."""
    root = tmp_path / "images"
    shutil.copytree(image_root, root)
    for path in (root / "train").glob("*/*.png"):
        if int(path.stem) >= 16:
            path.unlink()
    broken = root / "train" / "class1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])  # Valid PNG header, truncated body.
    run = selfsup_here(
        "pretrain",
        f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data=folder:{root}",
        "--config.eval_split=val",
        "--config.batch_size=16",
        "--config.image_size=16",
        "--config.total_steps=2",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {broken} in folder:{root} split 'train' does not decode (Invalid PNG. Failed "
        "to initialize decoder.): remove or replace it, or set --config.corrupt_images=skip "
        "to leave undecodable images out."
    )


@pytest.mark.slow
@pytest.mark.xdist_group("finished_run")
def test_sigkill_between_checkpoints_then_the_same_command_ends_bitwise_equal(
    finished_run, image_root, tmp_path
):
    """The re-run is also the pretrain command's way out on success."""
    command = [
        "pretrain", f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal",
        f"--workdir={tmp_path / 'killed'}", f"--config.data=folder:{image_root}",
        "--config.eval_split=val", *(f"--config.{k}={v}" for k, v in KILL_OVERRIDES.items()),
    ]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "selfsup", *command], cwd=tmp_path,
                               env=cli_env(8), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint_4 = tmp_path / "killed" / "checkpoints" / "4"
    for line in process.stdout:
        if not line.startswith("step "):
            continue
        # Mid-interval (from step 6 on), once the step-4 save is complete.
        if int(line.split()[1].split("/")[0]) >= 6 and checkpoint_4.is_dir():
            process.kill()
            break
    assert process.wait(timeout=60) == -signal.SIGKILL
    process.stdout.close()

    rerun = selfsup(*command, cwd=tmp_path, devices=8)  # The same command.
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = int(re.search(r"Resuming from checkpoint at step (\d+)/16", rerun.stdout).group(1))
    assert resumed in (4, 8, 12)  # The newest save that completed before the kill.
    assert "step 16/16" in rerun.stdout and "images/s" in rerun.stdout and "ETA" in rerun.stdout

    mesh = parallel.make_mesh()
    _, step_killed, killed = load_train_state(tmp_path / "killed", mesh)
    _, step_full, full = load_train_state(finished_run, mesh)
    assert step_killed == step_full == 16
    # Parameters, BatchNorm statistics, optimizer state and step counter, bit for bit.
    leaves_killed, leaves_full = jax.tree.leaves(killed), jax.tree.leaves(full)
    assert len(leaves_killed) == len(leaves_full)
    for a, b in zip(jax.device_get(leaves_killed), jax.device_get(leaves_full)):
        np.testing.assert_array_equal(a, b)
    # The same metric lines, timings aside.
    killed_log, full_log = (
        [
            {k: v for k, v in json.loads(line).items() if k != "images_per_second"}
            for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in (tmp_path / "killed", finished_run)
    )
    assert [r["step"] for r in full_log] == [3, 6, 9, 12, 15, 16]
    assert killed_log == full_log


@pytest.mark.slow
def test_sigterm_stops_evaluate_before_training_in_one_line(pretrained_run, tmp_path):
    command = [
        sys.executable, "-m", "selfsup", "evaluate", f"{PROBE}:runlocal",
        f"--workdir={tmp_path / 'eval'}", f"--config.checkpoint={pretrained_run}",
        "--config.batch_size=8",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    while not (tmp_path / "eval" / ".lock").exists():  # Started: it holds its workdir.
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: stopped by SIGTERM: re-run the same command to continue (pretrain resumes from "
        "its last checkpoint, evaluate keeps the features and results it finished)."
    )

"""`python -m selfsup export` as a user runs it: a run's encoder and projection head as torchvision
state dicts that torch loads with strict=True and that compute the run's features; and the one-line
errors of export and of `init_from`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_cli import ROOT, assert_one_error_line, selfsup, selfsup_here
from test_pretrained import torchvision_file
from test_torchvision import HAS_TORCHVISION, TOLERANCE, run_torch

import selfsup as selfsup_package
from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.export import export
from selfsup.train.checkpoint import load_pretrained_model

EXPORT = f"--config={ROOT / 'configs' / 'export.py'}"


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_export_writes_torchvision_weights_of_the_run(pretrained_run, tmp_path):
    out = tmp_path / "export"
    run = selfsup(  # Without --config: export has one config file, configs/export.py.
        "export", f"--workdir={out}", f"--config.checkpoint={pretrained_run}",
        "--config.head=True", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Exported the ResNet-18 (cifar stem, width 1)" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export/step"] == 2 and summary["export/format"] == "torchvision"
    assert summary["export/files"] == ["encoder.safetensors", "projection.safetensors"]
    encoder = load_file(out / "encoder.safetensors")
    assert encoder["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert int(encoder["layer4.1.bn2.num_batches_tracked"]) == 2
    assert not any(key.startswith("fc.") for key in encoder)
    # The exported file rebuilds the run's encoder exactly.
    images = np.random.default_rng(0).random((4, 16, 16, 3), np.float32)
    _, _, model = load_pretrained_model(pretrained_run, parallel.make_mesh())
    features = np.asarray(model.encoder(images, train=False))
    np.testing.assert_array_equal(selfsup_package.load_encoder(out)(images, train=False), features)
    if not HAS_TORCHVISION:
        return  # The rest runs where torch is installed (CI's Python 3.11 end).
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "features.npy", features)
    config = json.loads((pretrained_run / "config.json").read_text())["simclr"]
    case = dict(depth=18, stem="cifar", images=str(tmp_path / "images.npy"))
    case |= dict(load=str(out / "encoder.safetensors"), features=str(tmp_path / "torch.npy"))
    case |= dict(
        resaved=str(tmp_path / "resaved.safetensors"), head=str(out / "projection.safetensors")
    )
    dims = (
        [512] + [config["proj_hidden_dim"]] * (config["proj_layers"] - 1) + [config["proj_out_dim"]]
    )
    case |= dict(head_dims=dims, head_inputs=str(tmp_path / "features.npy"))
    run_torch([case | dict(head_features=str(tmp_path / "torch_head.npy"))], tmp_path)
    assert np.abs(np.load(tmp_path / "torch.npy") - features).max() <= TOLERANCE
    head = np.asarray(model.projection(features, train=False))
    assert np.abs(np.load(tmp_path / "torch_head.npy") - head).max() <= TOLERANCE


def bad_runs(run: Path, tmp_path: Path) -> None:
    """Beside a real run: one that has saved no checkpoint, one of width 1/8 (its config alone),
    and torchvision files of another architecture and with a key missing."""
    config = json.loads((run / "config.json").read_text())
    for name, width in (("unsaved", 1.0), ("narrow", 0.125)):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".command").write_text("pretrain\n")
        config["model"]["width"] = width
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    torchvision_file(tmp_path / "resnet50.safetensors", 50, "imagenet")
    state = load_file(torchvision_file(tmp_path / "resnet18.safetensors"))
    del state["layer3.1.conv2.weight"]
    save_file(state, tmp_path / "cut.safetensors")


RUN = "RUN"  # Stands for the pretrained_run fixture's workdir.
SIMCLR = f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["export", EXPORT, "--workdir=W"], "error: export needs a pretraining run: pass "
         "--config.checkpoint=WORKDIR."),
        (["export", EXPORT, "--workdir=W", f"--config.checkpoint={RUN}", "--config.format=onnx"],
         "error: config.format='onnx' is invalid: set --config.format to one of ('torchvision', "
         "'timm', 'flax')."),
        (["export", EXPORT, "--workdir=W", f"--config.checkpoint={RUN}", "--config.format=flax",
          "--config.head=True"], "error: config.head exports the projection head for PyTorch"),
        (["export", EXPORT, "--workdir=W", "--config.checkpoint=missing"],
         "error: --config.checkpoint=missing does not exist"),
        (["export", EXPORT, "--workdir=W", "--config.checkpoint=unsaved"],
         "error: unsaved has no checkpoint yet: wait for the run's first one"),
        (["export", EXPORT, "--workdir=W", f"--config.checkpoint={RUN}", "--config.step=7"],
         "has no checkpoint at step 7 (steps: 2): pass one of those."),
        (["export", EXPORT, "--workdir=W", "--config.checkpoint=narrow"],
         "error: narrow has config.model.width=0.125, and torchvision's ResNets have width 1 "
         "only: export it with --config.format=flax."),
        (["export", EXPORT, f"--workdir={RUN}", f"--config.checkpoint={RUN}"],
         "holds the output of `python -m selfsup pretrain`, not of `export`"),
        (["pretrain", SIMCLR, "--workdir=W", "--config.init_from=torchvision:resnet50.safetensors"],
         "error: config.init_from=torchvision:resnet50.safetensors holds a ResNet-50 (imagenet "
         "stem, width 1), but config.model is a ResNet-18 (cifar stem, width 0.125): set "
         "--config.model.depth=50"),
        (["pretrain", SIMCLR, "--workdir=W", "--config.init_from=torchvision:cut.safetensors",
          "--config.model.width=1"], "error: cut.safetensors does not fit the torchvision ResNet "
         "it names (missing layer3.1.conv2.weight)"),
        (["evaluate", f"--config={ROOT / 'configs' / 'linear_probe.py'}:runlocal", "--workdir=W",
          f"--config.checkpoint={RUN}", "--config.init_from=torchvision:resnet18.pth"],
         "error: resnet18.pth does not exist"),
    ],
)  # fmt: skip
def test_bad_input_fails_with_one_line(args, message, pretrained_run, tmp_path, monkeypatch):
    """In this process; test_cli's `test_a_command_process_ends_on_bad_input_in_one_line` runs
    export's way out as a command."""
    bad_runs(pretrained_run, tmp_path)
    data = f"--config.data=folder:{pretrained_run.parent / 'images'}"
    args = [a.replace(RUN, str(pretrained_run)) for a in args]
    args += [data] if args[0] == "pretrain" else []
    assert_one_error_line(selfsup_here(*args, cwd=tmp_path, monkeypatch=monkeypatch), 1, message)


def test_the_cli_lists_export():
    run = subprocess.run(
        [sys.executable, "-m", "selfsup", "nonsense"], capture_output=True, text=True, timeout=120
    )
    assert "export" in run.stderr and run.returncode != 0


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_export_refuses_a_config_json_that_no_longer_fits_the_checkpoint(pretrained_run, tmp_path):
    # As evaluate refuses it: the shapes config.json builds differ from the checkpoint's.
    run = Path(shutil.copytree(pretrained_run, tmp_path / "run"))
    saved = json.loads((run / "config.json").read_text())
    saved["model"]["width"] = 0.5
    (run / "config.json").write_text(json.dumps(saved))
    config = ml_collections.ConfigDict(dict(checkpoint=str(run), step=0, format="flax", head=False))
    message = r"checkpoint .*/2 does not fit the model of this config .*bn1/mean \(64,\) vs \(32,\)"
    with pytest.raises(ConfigError, match=message):
        export(config, tmp_path / "export")
    assert not (tmp_path / "export").exists()  # Nothing written.
    with pytest.raises(ConfigError, match=message):
        selfsup_package.load_encoder(run)

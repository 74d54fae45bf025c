"""selfsup.load_encoder and config.init_from: the encoder of a run, of an export or of a
torchvision file, equal to what the run evaluates, loaded without TensorFlow; bad input named in
one ConfigError."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

import selfsup
from selfsup import parallel, pretrained
from selfsup.config import ConfigError
from selfsup.export import export
from selfsup.models import torchvision
from selfsup.models.resnet import ResNet
from selfsup.pretext import get_task
from selfsup.train.checkpoint import load_pretrained_model
from selfsup.train.optim import make_optimizer
from selfsup.train.state import create_train_state, split_model

IMAGES = np.random.default_rng(0).random((4, 16, 16, 3), np.float32)


def flax_export(run: Path, workdir: Path, **overrides) -> Path:
    config = ml_collections.ConfigDict(dict(checkpoint=str(run), step=0, format="flax", head=False))
    config.update(overrides)
    export(config, workdir)
    return workdir


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_load_encoder_gives_the_features_the_run_evaluates(pretrained_run, tmp_path):
    _, step, model = load_pretrained_model(pretrained_run, parallel.make_mesh())
    evaluated = np.asarray(model.encoder(IMAGES, train=False))
    out = flax_export(pretrained_run, tmp_path / "export")
    for path in (pretrained_run, out, out / "encoder.safetensors"):
        np.testing.assert_array_equal(selfsup.load_encoder(path)(IMAGES, train=False), evaluated)
    # Inference mode: the run's moved statistics, not the batch's.
    assert not np.allclose(model.encoder(IMAGES, train=True), evaluated, atol=1e-3)


NO_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError, as if not installed.
import numpy as np
import selfsup
images = np.load(sys.argv[1])
for path in sys.argv[2:]:
    print(np.asarray(selfsup.load_encoder(path)(images, train=False)).tolist())
"""


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_load_encoder_imports_no_tensorflow(pretrained_run, tmp_path):
    out = flax_export(pretrained_run, tmp_path / "export")
    np.save(tmp_path / "images.npy", IMAGES)
    run = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, str(tmp_path / "images.npy"), str(pretrained_run),
         str(out / "encoder.safetensors")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    expected = np.asarray(selfsup.load_encoder(pretrained_run)(IMAGES, train=False))
    for line in run.stdout.splitlines():
        np.testing.assert_array_equal(np.array(json.loads(line), np.float32), expected)


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_a_run_is_read_at_the_step_asked_and_never_changed(pretrained_run):
    before = sorted(
        (p.relative_to(pretrained_run), p.stat().st_mtime) for p in pretrained_run.rglob("*")
    )
    run = pretrained.read_run(pretrained_run, step=2, modules=("encoder", "projection"))
    assert run.step == 2 and run.config.task == "simclr"
    assert "layers/0/linear/kernel" in run.params["projection"]
    assert set(run.batch_stats["encoder"]) == {
        k for k in pretrained.flatten(split_model(selfsup.load_encoder(pretrained_run))[2])
    }
    after = sorted(
        (p.relative_to(pretrained_run), p.stat().st_mtime) for p in pretrained_run.rglob("*")
    )
    assert after == before


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_bad_paths_are_named_with_the_fix(pretrained_run, tmp_path):
    def error(path, **kwargs) -> str:
        with pytest.raises(ConfigError) as e:
            selfsup.load_encoder(path, **kwargs)
        return str(e.value)

    assert "does not exist" in error(tmp_path / "nothing.safetensors")
    assert "no checkpoint at step 7 (steps: 2)" in error(pretrained_run, step=7)
    unsaved = tmp_path / "unsaved"
    unsaved.mkdir()
    (unsaved / "config.json").write_text((pretrained_run / "config.json").read_text())
    (unsaved / ".command").write_text("pretrain\n")
    assert f"{unsaved} has no checkpoint yet" in error(unsaved)
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / ".command").write_text("evaluate\n")
    assert "holds the output of `python -m selfsup evaluate`" in error(tmp_path / "evaluation")
    (tmp_path / "notes.safetensors").write_text("not a tensor file")
    assert "not a readable .safetensors file" in error(tmp_path / "notes.safetensors")
    save_file({"weights": np.zeros(3, np.float32)}, tmp_path / "other.safetensors")
    assert "neither a torchvision ResNet nor a timm ViT state dict nor a selfsup export" in error(
        tmp_path / "other.safetensors"
    )
    out = flax_export(pretrained_run, tmp_path / "export")
    tensors, metadata = pretrained.read_tensors(out / "encoder.safetensors")
    del tensors["batch_stats/stage2/1/bn1/mean"]
    save_file(tensors, tmp_path / "cut.safetensors", metadata=metadata)
    assert "missing stage2/1/bn1/mean" in error(tmp_path / "cut.safetensors")


def test_a_pytorch_pickle_without_torch_is_one_line_with_the_fix(tmp_path):
    (tmp_path / "resnet.pth").write_bytes(b"\x80\x02}q\x00.")
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from selfsup.pretrained import read_weights\n"
        f"read_weights({str(tmp_path / 'resnet.pth')!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "ConfigError" in run.stderr and "pip install torch, or convert it" in run.stderr


def torchvision_file(path: Path, depth: int = 18, stem: str = "cifar") -> Path:
    model = nnx.eval_shape(lambda: ResNet(depth, stem=stem, rngs=nnx.Rngs(0)))
    _, params, stats = split_model(model)
    rng = np.random.default_rng(depth)

    def values(tree):
        return {
            k: rng.random(v.shape, np.float32) + 0.5 for k, v in pretrained.flatten(tree).items()
        }

    save_file(torchvision.to_torch(values(params), values(stats), batches=5), path)
    return path


def test_init_from_needs_the_configs_architecture(tmp_path):
    weights = torchvision_file(tmp_path / "resnet50.safetensors", 50, "imagenet")
    model = ml_collections.ConfigDict(
        dict(name="resnet", depth=18, stem="cifar", width=0.125, dtype="float32", kernels="auto")
    )
    with pytest.raises(ConfigError) as e:
        pretrained.init_weights(f"torchvision:{weights}", model)
    assert str(e.value) == (
        f"config.init_from=torchvision:{weights} holds a ResNet-50 (imagenet stem, width 1), but "
        "config.model is a ResNet-18 (cifar stem, width 0.125): set --config.model.depth=50 "
        "--config.model.stem=imagenet --config.model.width=1, or pass weights of a ResNet-18 "
        "(cifar stem, width 0.125)."
    )


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_init_from_replaces_the_fresh_encoder_and_nothing_else(pretrained_run, tmp_path):
    config = ml_collections.ConfigDict(json.loads((pretrained_run / "config.json").read_text()))
    config.init_from = f"torchvision:{torchvision_file(tmp_path / 'resnet18.safetensors')}"
    task = get_task(config)
    tx, _ = make_optimizer(
        config.optim, batch_size=8, total_steps=2, warmup_steps=0, steps_per_epoch=1.0
    )
    mesh = parallel.make_mesh()
    fresh = create_train_state(task, tx, seed=0, mesh=mesh)
    state = pretrained.init_train_state(
        fresh, pretrained.init_weights(config.init_from, config.model)
    )
    wanted = pretrained.read_weights(tmp_path / "resnet18.safetensors")
    for kind, flat in (("params", wanted.params), ("batch_stats", wanted.batch_stats)):
        got = pretrained.flatten(getattr(state, kind)["encoder"])
        assert got.keys() == flat.keys()
        for name, value in got.items():
            np.testing.assert_array_equal(value, flat[name], err_msg=name)
            assert (
                value.sharding
                == fresh.params["projection"]["layers"][0]["linear"]["kernel"].sharding
            )
    jax.tree.map(
        np.testing.assert_array_equal, state.params["projection"], fresh.params["projection"]
    )
    assert state.opt_state is fresh.opt_state


@pytest.mark.slow  # pretrained_run: ~35 s once per session.
def test_every_reader_verifies_the_checksums_with_the_same_error(pretrained_run, tmp_path, capsys):
    from test_checkpoint import digest, flip_a_byte

    run = Path(shutil.copytree(pretrained_run, tmp_path / "run"))
    flip_a_byte(run / "checkpoints" / "2")
    before = digest(run)
    model = pretrained.pretraining_config(run, "path").model
    readers = {
        "load_encoder": lambda: selfsup.load_encoder(run),
        "export": lambda: flax_export(run, tmp_path / "export"),
        "init_from": lambda: pretrained.init_weights(str(run), model),
        "evaluate": lambda: load_pretrained_model(run, parallel.make_mesh()),
    }
    for name, read in readers.items():
        with pytest.raises(ConfigError, match=f"no readable checkpoint in {run}/checkpoints"):
            read()
        out = capsys.readouterr().out
        assert "Checkpoint at step 2 is damaged (default/" in out, name
        assert "(checksum mismatch)); left in place" in out, name
    with pytest.raises(ConfigError, match=r"step 2 .* is damaged .*\(intact steps: none\)\.$"):
        selfsup.load_encoder(run, step=2)
    assert digest(run) == before and not (tmp_path / "export").exists()

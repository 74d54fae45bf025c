"""selfsup's ResNet and projection head in torchvision's module compute the same features, and
torchvision's weights imported back the same as in torchvision; PyTorch runs in a process of
its own (tests/torchvision_side.py). Then the name mapping and its errors, without torch."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from selfsup import pretrained
from selfsup.config import ConfigError
from selfsup.models import torchvision
from selfsup.models.heads import ProjectionHead
from selfsup.models.resnet import ResNet, from_config
from selfsup.train.state import split_model

HERE = Path(__file__).resolve().parent
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torch and torchvision")
TOLERANCE = 1e-4  # Max abs difference of fp32 features (the bound).


def compare(ours: np.ndarray, path: str) -> str:
    """Asserts that float32 features `ours` are within TOLERANCE of torchvision's at `path`,
    or, where float32 rounding alone moves torchvision's own features further than that from
    their float64 values (the deeper random nets here), at most twice as far from those values
    as torchvision's are: a wrong name or layout moves features by far more."""
    torch32, torch64 = np.load(path), np.load(path.replace(".npy", "_64.npy"))
    diff = np.abs(ours - torch32).max()
    ours64, theirs64 = np.abs(ours - torch64).max(), np.abs(torch32 - torch64).max()
    assert diff <= TOLERANCE or ours64 <= 2 * theirs64, (diff, ours64, theirs64)
    return f"{diff:.2g} (from float64: ours {ours64:.2g}, torchvision's {theirs64:.2g})"


def briefly_trained(depth: int, stem: str, size: int) -> ResNet:
    """A width-1 encoder as `kernels="auto"` builds it, with random BatchNorm scales and offsets
    (so no mapping hides behind an initial 0 or 1) and statistics from one train-mode pass."""
    model = ml_collections.ConfigDict(
        dict(depth=depth, stem=stem, width=1.0, dtype="float32", kernels="auto")
    )
    encoder = from_config(model, rngs=nnx.Rngs(depth))
    rng = np.random.default_rng(depth)
    for _, module in nnx.iter_modules(encoder):
        if isinstance(module, nnx.BatchNorm):
            module.scale[...] = rng.uniform(0.5, 1.5, module.scale.shape)
            module.bias[...] = rng.normal(0.0, 0.1, module.bias.shape)
            module.momentum = 0.0  # The statistics become the batch's.
    encoder(rng.random((32, size, size, 3), np.float32), train=True)
    stats = pretrained.flatten(split_model(encoder)[2])
    assert np.ptp(stats["stage4/0/bn1/mean"]) > 0 and np.ptp(stats["stage1/0/bn1/var"]) > 0
    return encoder


def variables_of(depth: int, stem: str = "cifar") -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of a width-1 ResNet's variables, by flax name."""
    model = nnx.eval_shape(lambda: ResNet(depth, stem=stem, rngs=nnx.Rngs(0)))
    _, params, stats = split_model(model)
    return {**pretrained.flatten(params), **pretrained.flatten(stats)}


def variables(encoder: nnx.Module) -> dict[str, np.ndarray]:
    _, params, batch_stats = split_model(encoder)
    flat = {**pretrained.flatten(params), **pretrained.flatten(batch_stats)}
    return {k: np.asarray(v) for k, v in flat.items()}


def run_torch(cases: list[dict], tmp_path: Path) -> None:
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    run = subprocess.run(
        [sys.executable, str(HERE / "torchvision_side.py"), str(tmp_path / "cases.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def round_trip(depth: int, stem: str, tmp_path: Path) -> str:
    """Exports, loads in torchvision and back, and imports a torchvision-initialised ResNet;
    returns the measured differences (the test prints them: `pytest -s`)."""
    size = 32 if stem == "cifar" else 64
    images = np.random.default_rng(1).random((2, size, size, 3), np.float32)
    np.save(tmp_path / "images.npy", images)
    encoder = briefly_trained(depth, stem, size)
    _, params, batch_stats = split_model(encoder)
    exported = torchvision.to_torch(
        pretrained.flatten(params), pretrained.flatten(batch_stats), batches=1
    )
    save_file(exported, tmp_path / "exported.safetensors")
    files = {
        name: str(tmp_path / name)
        for name in ("features.npy", "resaved.safetensors", "fresh.safetensors", "fresh.npy")
    }
    case = dict(depth=depth, stem=stem, images=str(tmp_path / "images.npy"))
    case |= dict(load=str(tmp_path / "exported.safetensors"), features=files["features.npy"])
    case |= dict(resaved=files["resaved.safetensors"], fresh=files["fresh.safetensors"])
    run_torch([case | dict(fresh_features=files["fresh.npy"])], tmp_path)

    ours = np.asarray(encoder(images, train=False))
    exported = compare(ours, files["features.npy"])
    # Back from torch's own state_dict(): the same numbers, bit for bit.
    back = variables(pretrained.load_encoder(files["resaved.safetensors"]))
    original = variables(encoder)
    assert back.keys() == original.keys()
    for name, value in original.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    # A torchvision ResNet of torch's own init (classifier included) imported.
    fresh = pretrained.load_encoder(files["fresh.safetensors"])
    pickled = variables(
        pretrained.load_encoder(files["fresh.safetensors"].replace(".safetensors", ".pth"))
    )
    for name, value in variables(fresh).items():
        np.testing.assert_array_equal(pickled[name], value, err_msg=name)
    imported = compare(np.asarray(fresh(images, train=False)), files["fresh.npy"])
    return (
        f"ResNet-{depth} {stem} (largest |feature| {np.abs(ours).max():.3g}): exported "
        f"{exported}; imported {imported}"
    )


@pytest.mark.slow
@needs_torchvision
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet18_round_trips_through_torchvision(stem, tmp_path):
    print(round_trip(18, stem, tmp_path))


@needs_torchvision
@pytest.mark.slow
# Each stem is tested on ResNet-18 above; the deeper ones add their block counts and the
# bottleneck block, so one stem each suffices.
@pytest.mark.parametrize("depth, stem", [(34, "cifar"), (50, "imagenet")])
def test_resnet34_and_50_round_trip_through_torchvision(depth, stem, tmp_path):
    print(round_trip(depth, stem, tmp_path))


@needs_torchvision
def test_projection_head_runs_as_torch_sequential(tmp_path):
    dims = [512, 64, 64, 32]
    head = ProjectionHead(
        dims[0], hidden_dim=dims[1], out_dim=dims[-1], num_layers=3, rngs=nnx.Rngs(0)
    )
    rng = np.random.default_rng(0)
    for _, module in nnx.iter_modules(head):
        if isinstance(module, nnx.BatchNorm):
            module.scale[...] = rng.uniform(0.5, 1.5, module.scale.shape)
            if module.bias is not None:  # The last layer's BatchNorm has no offset (simclr's).
                module.bias[...] = rng.normal(0.0, 0.1, module.bias.shape)
            module.momentum = 0.0
    head(rng.normal(size=(16, dims[0])).astype(np.float32), train=True)
    inputs = rng.normal(size=(4, dims[0])).astype(np.float32)
    _, params, batch_stats = split_model(head)
    state = torchvision.to_torch(
        pretrained.flatten(params), pretrained.flatten(batch_stats), batches=3, head=True
    )
    assert state["7.bias"].tolist() == [0.0] * dims[-1] and int(state["4.num_batches_tracked"]) == 3
    save_file(state, tmp_path / "head.safetensors")
    np.save(tmp_path / "inputs.npy", inputs)
    np.save(tmp_path / "images.npy", np.zeros((1, 8, 8, 3), np.float32))
    case = dict(depth=18, stem="cifar", images=str(tmp_path / "images.npy"), head_dims=dims)
    case |= dict(head=str(tmp_path / "head.safetensors"), head_inputs=str(tmp_path / "inputs.npy"))
    run_torch([case | dict(head_features=str(tmp_path / "out.npy"))], tmp_path)
    ours = np.asarray(head(inputs, train=False))
    assert np.abs(np.load(tmp_path / "out.npy") - ours).max() <= TOLERANCE * np.abs(ours).max()


def torchvision_state(depth: int, stem: str) -> dict[str, np.ndarray]:
    """What torchvision's state_dict() of that ResNet holds (zeros), classifier included."""
    shapes = variables_of(depth, stem)
    zeros = {k: np.zeros(v.shape, np.float32) for k, v in shapes.items()}
    params = {k: v for k, v in zeros.items() if not k.endswith(("/mean", "/var"))}
    stats = {k: v for k, v in zeros.items() if k not in params}
    features = shapes["stage4/0/bn1/scale"].shape[0] * (4 if depth == 50 else 1)
    classifier = {"fc.weight": np.zeros((1000, features)), "fc.bias": np.zeros(1000)}
    return torchvision.to_torch(params, stats, batches=0) | classifier


def test_names_map_to_torchvisions():
    names = {
        "stem/conv/kernel": "conv1.weight",
        "stem/bn/scale": "bn1.weight",
        "stem/bn/var": "bn1.running_var",
        "stage1/0/conv2/kernel": "layer1.0.conv2.weight",
        "stage3/0/shortcut/conv/kernel": "layer3.0.downsample.0.weight",
        "stage4/2/shortcut/bn/mean": "layer4.2.downsample.1.running_mean",
        "classifier/kernel": "fc.weight",
    }
    assert {k: torchvision.torch_name(k) for k in names} == names
    head = {"layers/0/linear/kernel": "0.weight", "layers/2/bn/bias": "7.bias"}
    assert {k: torchvision.torch_name(k, head=True) for k in head} == head
    kernel = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # HWIO
    moved = torchvision.to_torch_layout(kernel)
    assert moved.shape == (5, 4, 2, 3) and moved[4, 3, 1, 2] == kernel[1, 2, 3, 4]
    np.testing.assert_array_equal(torchvision.from_torch_layout(moved), kernel)


@pytest.mark.parametrize(
    "depth, stem", [(18, "cifar"), (34, "imagenet"), (50, "imagenet"), (50, "cifar")]
)
def test_architecture_is_read_from_the_state_dict(depth, stem):
    assert torchvision.torchvision_architecture(torchvision_state(depth, stem), "x") == (
        depth,
        stem,
    )


def test_a_state_dict_that_does_not_fit_names_what_differs():
    state = torchvision_state(18, "cifar")
    shapes = {k: v.shape for k, v in variables_of(18).items()}
    del state["layer2.1.bn1.running_var"]
    state["layer2.1.extra.weight"] = np.zeros(3, np.float32)
    state["layer4.0.conv1.weight"] = np.zeros((512, 256, 1, 1), np.float32)
    with pytest.raises(ConfigError) as error:
        torchvision.from_torch(state, shapes, "w.safetensors")
    assert str(error.value) == (
        "w.safetensors does not fit the torchvision ResNet it names (missing "
        "layer2.1.bn1.running_var; unexpected layer2.1.extra.weight; layer4.0.conv1.weight has "
        "shape (512, 256, 1, 1), not (512, 256, 3, 3)): pass the unchanged state_dict() of a "
        "torchvision resnet18/34/50."
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("conv1.weight"), "is not a torchvision ResNet state dict"),
        (lambda s: s.update({"conv1.weight": np.zeros((32, 3, 7, 7))}), "32 output channels"),
        (
            lambda s: s.update({"layer3.6.conv1.weight": s["layer3.0.conv1.weight"]}),
            r"\(2, 2, 3, 2\) basic",
        ),
    ],
)
def test_other_networks_are_refused_by_name(change, message):
    state = torchvision_state(18, "imagenet")
    change(state)
    with pytest.raises(ConfigError, match=message):
        torchvision.torchvision_architecture(state, "w.safetensors")

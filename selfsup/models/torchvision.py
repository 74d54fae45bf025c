"""selfsup's ResNet and SimCLR projection head under PyTorch's names and layouts, both ways, in
NumPy (no torch import).

selfsup's ResNet is torchvision's `resnet18/34/50` (v1.5: a bottleneck's stride on its 3x3 conv;
convs and the max-pool pad (k-1)//2 on each side; BatchNorm epsilon 1e-5), stored NHWC under
stage-prefixed names; torchvision stores NCHW under its own. Variables here are flat dicts of
arrays: flax paths joined by "/" (`stage3/1/bn2/scale`) on one side, torch's state-dict keys on
the other (`layer3.1.bn2.weight`). The CIFAR stem (3x3 stride-1 conv, no max-pool) is
torchvision's module with `conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and
`maxpool = nn.Identity()`; a torchvision state dict cannot tell the two stems' max-pools apart,
so a 3x3 `conv1` is read as that module. Only width 1 exists in torchvision.

Inference computes the same function on both sides; training after a move does not quite: torch's
BatchNorm momentum 0.1 is flax's 0.9, and torch tracks the unbiased batch variance.
"""

from __future__ import annotations

import re

import numpy as np

from selfsup.config import ConfigError

Flat = dict[str, np.ndarray]

_RESNET_NAMES = (
    (r"^stem/conv/", "conv1/"),
    (r"^stem/bn/", "bn1/"),
    (r"^stage(\d)/", r"layer\1/"),
    (r"/shortcut/conv/", "/downsample/0/"),
    (r"/shortcut/bn/", "/downsample/1/"),
    (r"^classifier/", "fc/"),
)
# nn.Sequential(Linear(bias=False), BatchNorm1d, ReLU, ..., Linear(bias=False), BatchNorm1d):
# layer i's Linear is module 3i, its BatchNorm module 3i + 1.
_HEAD_NAMES = (
    (r"^layers/(\d+)/linear/", lambda m: f"{3 * int(m[1])}/"),
    (r"^layers/(\d+)/bn/", lambda m: f"{3 * int(m[1]) + 1}/"),
)
_LEAF_NAMES = (
    (r"/(kernel|scale)$", "/weight"),
    (r"/mean$", "/running_mean"),
    (r"/var$", "/running_var"),
)
# In a torchvision state dict but no part of the encoder: the classifier, and each BatchNorm's
# count of training batches (used only by torch's momentum=None).
_NOT_ENCODER = re.compile(r"^fc\.|\.num_batches_tracked$")
# (blocks per stage, bottleneck blocks) -> depth.
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50}


def torch_name(name: str, *, head: bool = False) -> str:
    """The torch key of the flax variable `name` of the ResNet, or (`head`) of the projection
    head as an `nn.Sequential`."""
    for pattern, replacement in (_HEAD_NAMES if head else _RESNET_NAMES) + _LEAF_NAMES:
        name = re.sub(pattern, replacement, name)
    return name.replace("/", ".")


def _torch_axes(ndim: int) -> tuple[int, ...]:
    """Conv kernels HWIO -> OIHW, dense kernels [in, out] -> [out, in]; vectors unchanged."""
    return (3, 2, 0, 1) if ndim == 4 else tuple(reversed(range(ndim)))


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[axis] for axis in _torch_axes(len(shape)))


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(value).transpose(_torch_axes(value.ndim)))


def from_torch_layout(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(value).transpose(np.argsort(_torch_axes(value.ndim))))


def to_torch(params: Flat, batch_stats: Flat, *, batches: int, head: bool = False) -> Flat:
    """The state dict torch's module loads with `strict=True`: every variable renamed and
    transposed, plus each BatchNorm's `num_batches_tracked` (`batches`, the training steps).
    A BatchNorm without an offset (the head's last) gets a zero one, which computes the same."""
    state = {torch_name(k, head=head): to_torch_layout(v) for k, v in params.items()}
    for name, mean in batch_stats.items():
        if not name.endswith("/mean"):
            continue
        bn = torch_name(name, head=head).removesuffix("running_mean")
        state.setdefault(bn + "bias", np.zeros_like(mean))
        state[bn + "num_batches_tracked"] = np.array(batches, np.int64)
    state.update({torch_name(k, head=head): to_torch_layout(v) for k, v in batch_stats.items()})
    return state


def from_torch(state: Flat, shapes: dict[str, tuple[int, ...]], what: str) -> Flat:
    """The flax variables named in `shapes` (flax name -> shape) from a torchvision ResNet state
    dict, whose classifier and batch counts are ignored. ConfigError naming the keys that are
    missing, extra or of another shape."""
    names = {torch_name(name): name for name in shapes}
    keys = {key for key in state if not _NOT_ENCODER.search(key)}
    wanted = {key: torch_shape(shapes[name]) for key, name in names.items()}
    if problems := mismatches({key: state[key].shape for key in keys}, wanted):
        raise ConfigError(
            f"{what} does not fit the torchvision ResNet it names ({problems}): pass the "
            "unchanged state_dict() of a torchvision resnet18/34/50."
        )
    return {name: from_torch_layout(np.asarray(state[key])) for key, name in names.items()}


def mismatches(found: dict[str, tuple], wanted: dict[str, tuple]) -> str:
    """The first three of the keys missing from `found`, unexpected in it, or of another shape
    than `wanted` says, and how many more; "" if none (a state dict's keys -> shapes)."""
    problems = [f"missing {key}" for key in sorted(wanted.keys() - found.keys())]
    problems += [f"unexpected {key}" for key in sorted(found.keys() - wanted.keys())]
    problems += [
        f"{key} has shape {tuple(found[key])}, not {tuple(wanted[key])}"
        for key in sorted(wanted.keys() & found.keys())
        if tuple(found[key]) != tuple(wanted[key])
    ]
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more if problems else ""


def torchvision_architecture(state: Flat, what: str) -> tuple[int, str]:
    """(depth, stem) of the torchvision ResNet whose state dict `state` is; ConfigError for
    anything else (a wide or deeper ResNet, another width, another network)."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4 or conv1.shape[2] not in (3, 7):
        raise ConfigError(
            f"{what} is not a torchvision ResNet state dict (no 3x3 or 7x7 conv1.weight): pass "
            "the state_dict() of torchvision.models.resnet18/34/50."
        )
    if conv1.shape[0] != 64:
        raise ConfigError(
            f"{what}: conv1 has {conv1.shape[0]} output channels, torchvision's ResNets 64: "
            "only width 1 has a torchvision equivalent."
        )
    counts = tuple(
        len({key.split(".")[1] for key in state if key.startswith(f"layer{i}.")})
        for i in range(1, 5)
    )
    bottleneck = "layer1.0.conv3.weight" in state
    depth = _DEPTHS.get((counts, bottleneck))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ConfigError(
            f"{what} is a ResNet of {counts} {kind} blocks per stage, not a ResNet-18/34/50: "
            "selfsup's encoders are those three."
        )
    return depth, "imagenet" if conv1.shape[2] == 7 else "cifar"

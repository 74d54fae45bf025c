"""The PyTorch side of tests/test_torchvision.py, run as its own process:
`python torchvision_side.py CASES.json`. (Building a torchvision model loads triton, which
crashes a process that imported TensorFlow first, as the test process has.)

Each case (a JSON object) names a depth, a stem, a batch of NHWC images (.npy) and any of:
- `load`: a state dict (.safetensors) to load with strict=True into torchvision's module; its
  eval-mode features go to `features` (.npy; `_64.npy` in float64), its state_dict() to
  `resaved` (.safetensors);
- `fresh`: where to save the state dict of a torchvision ResNet of its own random init with
  BatchNorm statistics from a train-mode pass (its classifier included, as torchvision's
  pretrained files have it), whose eval-mode features go to `fresh_features`;
- `head`, `head_dims`, `head_inputs`, `head_features`: a projection head's state dict for the
  nn.Sequential of Linear/BatchNorm1d/ReLU with those widths, its inputs and outputs.
"""

import copy
import json
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file, save_file


def torchvision_resnet(depth: int, stem: str) -> torch.nn.Module:
    """torchvision's ResNet as selfsup's encoder: pooled features, and the CIFAR stem's changes."""
    model = getattr(torchvision.models, f"resnet{depth}")()
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model


def save_features(model: torch.nn.Module, images: np.ndarray, path: str) -> None:
    """Eval-mode features in float32 to `path`, and in float64 (the reference float32 rounding
    is measured against) to `path` with `_64` before `.npy`."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    model.eval()
    with torch.no_grad():
        np.save(path, model(x).numpy())
        np.save(path.replace(".npy", "_64.npy"), copy.deepcopy(model).double()(x.double()).numpy())


def projection_head(dims: list[int]) -> torch.nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [torch.nn.Linear(a, b, bias=False), torch.nn.BatchNorm1d(b)]
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def run(case: dict) -> None:
    torch.manual_seed(0)
    images = np.load(case["images"])
    if "load" in case:
        model = torchvision_resnet(case["depth"], case["stem"])
        model.fc = torch.nn.Identity()
        model.load_state_dict(load_file(case["load"]), strict=True)
        save_features(model, images, case["features"])
        save_file(model.state_dict(), case["resaved"])
    if "fresh" in case:
        model = torchvision_resnet(case["depth"], case["stem"])
        for module in model.modules():  # Non-trivial offsets, and statistics from data.
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
                torch.nn.init.normal_(module.bias, 0.0, 0.1)
                module.momentum = 1.0
        model.train()(torch.rand(32, 3, *images.shape[1:3]))
        save_file(model.state_dict(), case["fresh"])
        torch.save(model.state_dict(), case["fresh"].replace(".safetensors", ".pth"))
        model.fc = torch.nn.Identity()
        save_features(model, images, case["fresh_features"])
    if "head" in case:
        head = projection_head(case["head_dims"])
        head.load_state_dict(load_file(case["head"]), strict=True)
        head.eval()
        with torch.no_grad():
            out = head(torch.from_numpy(np.load(case["head_inputs"]))).numpy()
        np.save(case["head_features"], out)


if __name__ == "__main__":
    for case in json.loads(open(sys.argv[1]).read()):
        run(case)

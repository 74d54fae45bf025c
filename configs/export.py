"""Export a pretraining run's encoder for PyTorch (`format="torchvision"`) or for JAX code
outside selfsup (`format="flax"`); docs/pretrained.md.

  python -m selfsup export --config=configs/export.py --workdir=runs/export \
      --config.checkpoint=runs/simclr_cifar10 [--config.format=flax] [--config.head=True]
"""

import ml_collections

from selfsup.config import parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parse_runlocal(arg)  # Accepted like every config's; an export takes seconds as it is.
    config = ml_collections.ConfigDict()
    config.checkpoint = ""  # Required: the --workdir of a pretraining run.
    config.step = 0  # The checkpoint's step; 0 = the latest.
    # "torchvision": torchvision.models.resnet18/34/50's state dict (width 1 only); "timm": a ViT
    # as timm's VisionTransformer state dict; "flax": selfsup's own names, for
    # selfsup.load_encoder. Each is a .safetensors file.
    config.format = "torchvision"
    config.head = False  # Also export the projection head (torchvision format).
    return config

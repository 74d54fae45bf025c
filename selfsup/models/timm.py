"""selfsup's ViT under timm's names and layouts, both ways, in NumPy (no torch import).

selfsup's ViT is timm's `VisionTransformer` with its defaults (`vit_tiny/small/base_patch*`,
classifier aside) and its flax paths are timm's module names, so a move renames leaves (a
kernel, and a LayerNorm's scale, is torch's `weight`) and transposes kernels: a Linear's
[in, out] is torch's [out, in], the patch conv's HWIO torch's OIHW. Variables here are flat
dicts of arrays, as in `selfsup.models.torchvision`: flax paths joined by "/"
(`blocks/3/attn/qkv/kernel`) on one side, timm's state-dict keys (`blocks.3.attn.qkv.weight`)
on the other.

The released ViTs of DINO (backbones without a head) and MAE use timm's names too. MAE's
pretraining checkpoints add a decoder (`decoder_*`, `mask_token`), which `from_timm` ignores as
it ignores timm's classifier (`head.*`, `fc_norm.*`). A ViT that classifies average-pooled
tokens (MAE's fine-tuned ones, timm's `global_pool="avg"`) has `fc_norm` in place of the
final `norm`: its `norm` is reported missing.
"""

from __future__ import annotations

import math
import re

import numpy as np

from selfsup.config import ConfigError
from selfsup.models.torchvision import (
    from_torch_layout,
    mismatches,
    to_torch_layout,
    torch_shape,
)
from selfsup.models.vit import SIZES

Flat = dict[str, np.ndarray]

# In timm's or MAE's state dicts but no part of the encoder.
_NOT_ENCODER = re.compile(r"^(head\.|fc_norm\.|decoder|mask_token$)")


def timm_name(name: str) -> str:
    """The timm key of the ViT's flax variable `name`."""
    return re.sub(r"/(kernel|scale)$", "/weight", name).replace("/", ".")


def _timm_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return torch_shape(shape) if name.endswith("/kernel") else tuple(shape)


def _timm_layout(name: str, value: np.ndarray) -> np.ndarray:
    """Kernels in torch's layout ([out, in], OIHW); the rest as they are."""
    return to_torch_layout(value) if name.endswith("/kernel") else np.ascontiguousarray(value)


def _flax_layout(name: str, value: np.ndarray) -> np.ndarray:
    return from_torch_layout(value) if name.endswith("/kernel") else np.asarray(value)


def to_timm(params: Flat) -> Flat:
    """The state dict timm's `VisionTransformer` (`num_classes=0`) loads with `strict=True`."""
    return {timm_name(name): _timm_layout(name, value) for name, value in params.items()}


def from_timm(state: Flat, shapes: dict[str, tuple[int, ...]], what: str) -> Flat:
    """The flax variables named in `shapes` (flax name -> shape) from a timm ViT state dict,
    whose classifier and any MAE decoder are ignored. ConfigError naming the keys that are
    missing, extra or of another shape."""
    names = {timm_name(name): name for name in shapes}
    keys = {key for key in state if not _NOT_ENCODER.search(key)}
    wanted = {key: _timm_shape(name, shapes[name]) for key, name in names.items()}
    if problems := mismatches({key: state[key].shape for key in keys}, wanted):
        raise ConfigError(
            f"{what} does not fit the timm ViT it names ({problems}): pass the unchanged "
            "state_dict() of a timm vit_tiny/small/base_patch*."
        )
    return {name: _flax_layout(name, state[key]) for key, name in names.items()}


def timm_architecture(state: Flat, what: str) -> tuple[str, int, int]:
    """(size, patch size, position-embedding grid per side) of the timm ViT whose state dict
    `state` is; ConfigError for anything else: no class token, register tokens, position
    embeddings for the patches only (`no_embed_class`) or a non-square grid, or a width and
    depth not in SIZES. The number of heads is no part of the weights: it is the size's."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or "cls_token" not in state or "pos_embed" not in state:
        raise ConfigError(
            f"{what} is not the state dict of a timm ViT with a class token (it needs "
            "patch_embed.proj.weight, cls_token and pos_embed): pass the state_dict() of a timm "
            "vit_tiny/small/base_patch*."
        )
    if "reg_token" in state:
        raise ConfigError(f"{what} has register tokens (reg_token): selfsup's ViT has none.")
    width, channels, patch, patch_w = proj.shape
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    sizes = {(w, d): size for size, (w, d, _) in SIZES.items()}
    if (width, depth) not in sizes or (channels, patch_w) != (3, patch):
        raise ConfigError(
            f"{what} is a ViT of width {width}, depth {depth} and {channels}-channel "
            f"{patch}x{patch_w} patches, none of selfsup's RGB square-patch "
            f"{', '.join(f'{s} (width {w}, depth {d})' for s, (w, d, _) in SIZES.items())}."
        )
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(max(tokens - 1, 0))
    if tuple(state["pos_embed"].shape) != (1, 1 + grid * grid, width):
        raise ConfigError(
            f"{what}: pos_embed {tuple(state['pos_embed'].shape)} does not embed the class token "
            "and a square grid of patches, as selfsup's ViT (timm's default) does."
        )
    return sizes[width, depth], patch, grid

"""The encoder families `config.model.name` picks, and what the rest of the code asks of one.

"resnet" is a ResNet-18/34/50 (`model.depth`, `stem`, `width`, `kernels`); "vit_tiny",
"vit_small", "vit_base" are ViTs (`model.patch_size`; `image_size`, the side its position
embeddings are made for). Each family ignores the other's keys, so one config block
holds both and `--config.model.name=vit_small` switches a recipe's encoder.

Every encoder gives `features(x, *, train, frozen_stages=0) -> {name: array}` (`pooled` the
default features, [N, feature_dim] float32), `encoder(x, train=...)` = its `pooled`,
`feature_dim`, and `depth_paths`: regexes of its parameter paths from the bottom depth up, which
fine-tuning freezes and rescales (a ResNet's stem and 4 stages, a ViT's embeddings and blocks).
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from selfsup.config import ConfigError, Rule, choice, integer
from selfsup.models import resnet, vit

Encoder = resnet.ResNet | vit.ViT
NAMES = ("resnet", *vit.SIZES)


def _grid_fits(patch_size: int, model: ml_collections.ConfigDict, run) -> str | None:
    """A ViT's images (`config.image_size`, or a patch task's `patch_size`, where the run has
    one) and the side its position embeddings are made for must be whole numbers of patches."""
    if not model.name.startswith("vit"):
        return None
    sides = {"model.image_size": model.image_size, "image_size": run.get("image_size")}
    task = run.get("task", "")
    if isinstance(run.get(task), ml_collections.ConfigDict):
        sides[f"{task}.patch_size"] = run[task].get("patch_size")
    for key, side in sides.items():
        if side and side % patch_size:
            return f"a divisor of config.{key}={side} (a ViT sees whole patches)"
    return None


# `config.model`'s rules (`selfsup.config.check_values`); "auto" dtype is resolved per backend.
VALUE_RULES = {
    "name": choice(*NAMES),
    **resnet.VALUE_RULES,
    "patch_size": Rule(integer(1, 4096).test, "an integer in [1, 4096]", _grid_fits),
    "image_size": integer(1, 4096, " (pixels)"),
}


def encoder_from_config(model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Encoder:
    """The encoder `config.model` describes."""
    if model.dtype not in resnet.COMPUTE_DTYPES:
        raise ConfigError(
            f"unknown config.model.dtype={model.dtype!r}: use one of "
            f"{sorted(resnet.COMPUTE_DTYPES)}."
        )
    if model.name == "resnet":
        return resnet.from_config(model, rngs=rngs)
    if model.name in vit.SIZES:
        return vit.ViT(
            model.name,
            patch_size=model.patch_size,
            image_size=model.image_size,
            dtype=resnet.COMPUTE_DTYPES[model.dtype],
            rngs=rngs,
        )
    raise ConfigError(f"unknown config.model.name={model.name!r}: use one of {list(NAMES)}.")


def describe(model: ml_collections.ConfigDict) -> str:
    """The architecture in words, e.g. "ResNet-50 (imagenet stem, width 1)", "vit_small/16 at
    224 px"."""
    if model.name == "resnet":
        return f"ResNet-{model.depth} ({model.stem} stem, width {model.width:g})"
    return f"{model.name}/{model.patch_size} at {model.image_size} px"


def architecture(model: ml_collections.ConfigDict) -> dict:
    """The keys of `model` that decide its parameters' names and shapes."""
    keys = ("depth", "stem", "width") if model.name == "resnet" else ("patch_size", "image_size")
    return {"name": model.name, **{key: model[key] for key in keys}}


def depths(model: ml_collections.ConfigDict) -> int:
    """How many depths fine-tuning freezes and rescales (`depth_paths`): a ResNet's stem and 4
    stages, a ViT's embeddings and blocks."""
    return 5 if model.name == "resnet" else 1 + vit.SIZES[model.name][1]


def probe_layers(model: ml_collections.ConfigDict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the depths a layer-wise probe taps, shallow to deep, ending at "pre_logits", the
    encoder's output; its other features), as `features` names them."""
    if model.name == "resnet":
        return ("stage1", "stage2", "stage3", "pre_logits"), ()
    blocks = (f"block{i}" for i in range(1, depths(model) - 1))
    return (*blocks, "pre_logits"), ("patch_mean", "cls_last4", "cls_patch_mean")


def with_drop_path(encoder: Encoder, drop_path: float) -> Encoder:
    """`encoder`, or a copy of it (the same arrays) whose blocks drop their residual branches up
    to `drop_path` (stochastic depth: a ViT's, whatever rate it was built with, e.g. a DINO
    student's); ConfigError for a ResNet at drop_path > 0."""
    if not isinstance(encoder, vit.ViT):
        if drop_path:
            raise ConfigError(
                f"finetune.drop_path={drop_path}: stochastic depth is a ViT's; selfsup's ResNets "
                "have none: set it to 0."
            )
        return encoder
    if encoder.drop_path == drop_path:
        return encoder
    copy = nnx.merge(*nnx.split(encoder))
    copy.set_drop_path(drop_path)
    return copy

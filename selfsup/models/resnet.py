"""ResNet-18/34/50 (v1.5) encoders in Flax NNX, NHWC, for self-supervised pretraining.

Two stems: "cifar" (3x3 stride-1 conv, no max-pool, for 32 px images) and "imagenet" (7x7
stride-2 conv and a 3x3/2 max-pool). v1.5 puts the bottleneck's stride on its 3x3 conv. Convs
and the max-pool pad symmetrically by (k-1)//2 like torchvision (and simclr's fixed padding of
strided convs), so torchvision's weights compute the same function here (simclr's max-pool pads
"SAME", on an even size only on the far side, which shifts every window by a pixel).
BatchNorm follows google-research/simclr (momentum 0.9, epsilon 1e-5, last BN of each residual
block zero-initialised) and its mode is an explicit `train` argument on every call, so
jit-compiled steps never depend on a mutable train/eval flag. Parameter paths are
stage-prefixed (`stem/conv/kernel`, `stage3/1/bn2/scale`, `classifier/kernel`) so optimizers
can freeze or rescale whole stages by regex.

`dtype` is the compute dtype: with bfloat16, convolutions and activations run in bf16 while
parameters (and so the optimizer state) stay float32, BatchNorm statistics reduce in float32,
and the pooled features come out in float32, so heads and losses on top of them run in float32.

The conv, BatchNorm and max-pool implementations are arguments (XLA's ops by default;
`selfsup.models.kernels` has the alternatives), so the architecture reads on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from selfsup.config import ConfigError, choice, number
from selfsup.data.augment_jax import to_float
from selfsup.models.kernels import KERNEL_NAMES, kernels_for

STAGE_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")
STAGE_WIDTHS = (64, 128, 256, 512)
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"); google-research/simclr
# uses Keras VarianceScaling() (scale 1, fan_in, truncated) instead.
CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# (in_ch, out_ch, kernel, stride) -> a conv layer; (features, zero_scale=False) -> a BatchNorm.
ConvDef = Callable[..., nnx.Conv]
NormDef = Callable[..., nnx.BatchNorm]


def conv_def(
    conv_general_dilated: Callable[..., jax.Array], *, dtype: Any, rngs: nnx.Rngs
) -> ConvDef:
    """Bias-free square convs computed by `conv_general_dilated`, padded by (kernel-1)//2 on
    each side, so stride s divides the size by s."""

    def conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nnx.Conv:
        pad = (kernel - 1) // 2
        return nnx.Conv(
            in_ch,
            out_ch,
            (kernel, kernel),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=CONV_INIT,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )

    return conv


def norm_def(norm: type[nnx.BatchNorm], *, dtype: Any, rngs: nnx.Rngs) -> NormDef:
    """BatchNorms of class `norm` (scale 1, or 0 with `zero_scale`) with simclr's settings."""

    def batch_norm(features: int, *, zero_scale: bool = False) -> nnx.BatchNorm:
        init = jax.nn.initializers.zeros if zero_scale else jax.nn.initializers.ones
        return norm(
            features,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            scale_init=init,
            dtype=dtype,
            rngs=rngs,
        )

    return batch_norm


class ConvBN(nnx.Module):
    """Conv followed by BatchNorm: the stem's first layer and the projection shortcut."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, *, conv: ConvDef, norm: NormDef
    ):
        self.conv = conv(in_ch, out_ch, kernel, stride)
        self.bn = norm(out_ch)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34); the stride sits on the first."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        *,
        zero_init_residual: bool,
        conv: ConvDef,
        norm: NormDef,
    ):
        self.conv1 = conv(in_ch, width, 3, stride)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, 1)
        self.bn2 = norm(width, zero_scale=zero_init_residual)
        self.shortcut = projection_shortcut(in_ch, width, stride, conv=conv, norm=norm)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        shortcut = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        *,
        zero_init_residual: bool,
        conv: ConvDef,
        norm: NormDef,
    ):
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 1, 1)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, stride)
        self.bn2 = norm(width)
        self.conv3 = conv(width, out_ch, 1, 1)
        self.bn3 = norm(out_ch, zero_scale=zero_init_residual)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride, conv=conv, norm=norm)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        shortcut = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + shortcut)


def projection_shortcut(
    in_ch: int, out_ch: int, stride: int, *, conv: ConvDef, norm: NormDef
) -> ConvBN | None:
    """1x1 conv + BN where the block changes shape; None (identity) otherwise."""
    if stride == 1 and in_ch == out_ch:
        return None
    return ConvBN(in_ch, out_ch, 1, stride, conv=conv, norm=norm)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

BLOCKS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}
STEMS = ("cifar", "imagenet")
# `config.model`'s rules (`selfsup.config.check_values`); "auto" dtype is resolved per backend.
VALUE_RULES = {
    "depth": choice(*BLOCKS),
    "stem": choice(*STEMS),
    # The stem's 64 channels times the width must leave at least one.
    "width": number(1 / 64, 16, " (a multiplier; SimCLR's widest ResNet: 4)"),
    "dtype": choice("auto", *COMPUTE_DTYPES),
    "kernels": choice(*KERNEL_NAMES),
}


class ResNet(nnx.Module):
    """ResNet v1.5 encoder; `model(x, train=...)` gives pooled features, or logits if
    `num_classes` is set. `conv` computes every convolution (`jax.lax.conv_general_dilated`'s
    signature), `norm` is the BatchNorm class (`nnx.BatchNorm`'s constructor and call), `pool`
    the ImageNet stem's max-pool (`nnx.max_pool`'s signature)."""

    def __init__(
        self,
        depth: int,
        *,
        stem: str = "cifar",
        width: float = 1.0,
        num_classes: int | None = None,
        zero_init_residual: bool = True,
        dtype: Any = jnp.float32,
        conv: Callable[..., jax.Array] = jax.lax.conv_general_dilated,
        norm: type[nnx.BatchNorm] = nnx.BatchNorm,
        pool: Callable[..., jax.Array] = nnx.max_pool,
        rngs: nnx.Rngs,
    ):
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
        if stem not in STEMS:
            raise ValueError(f'stem must be "cifar" or "imagenet", got {stem!r}')
        layers = {
            "conv": conv_def(conv, dtype=dtype, rngs=rngs),
            "norm": norm_def(norm, dtype=dtype, rngs=rngs),
        }
        block, counts = BLOCKS[depth]
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        imagenet = stem == "imagenet"
        self.pool = pool if imagenet else None
        self.stem = ConvBN(3, widths[0], 7 if imagenet else 3, 2 if imagenet else 1, **layers)
        in_ch = widths[0]
        for i, (stage_width, count) in enumerate(zip(widths, counts, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    block(
                        in_ch, stage_width, stride, zero_init_residual=zero_init_residual, **layers
                    )
                )
                in_ch = stage_width * block.expansion
            setattr(self, STAGE_NAMES[i + 1], nnx.List(blocks))
        self.feature_dim = in_ch
        self.depth_paths = tuple(f"{name}/" for name in STAGE_NAMES)
        self.classifier = (
            None if num_classes is None else nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
        )

    def features(
        self, x: jax.Array, *, train: bool, frozen_stages: int = 0
    ) -> dict[str, jax.Array]:
        """Feature maps after the stem and after each stage, and the global-average-pooled
        features ("pooled") of images `x`: float in [0, 1], or uint8 as they leave the host
        (converted here, on the device).

        `frozen_stages=n` (0..4) freezes the bottom n stages for fine-tuning: for n >= 1 the stem
        and stage1..stage<n> run in inference mode (running BatchNorm statistics, left
        unchanged) and no gradient flows back into them.
        """
        if not 0 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in 0..4, got {frozen_stages}")

        def output(i: int, y: jax.Array) -> jax.Array:
            return jax.lax.stop_gradient(y) if frozen_stages >= max(i, 1) else y

        x = nnx.relu(self.stem(to_float(x), train=train and frozen_stages == 0))
        if self.pool is not None:
            x = self.pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = output(0, x)
        out = {"stem": x}
        for i, name in enumerate(STAGE_NAMES[1:], start=1):
            for block in getattr(self, name):
                x = block(x, train=train and frozen_stages < i)
            out[name] = x = output(i, x)
        out["pooled"] = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
        return out

    def __call__(self, x: jax.Array, *, train: bool, frozen_stages: int = 0) -> jax.Array:
        pooled = self.features(x, train=train, frozen_stages=frozen_stages)["pooled"]
        return pooled if self.classifier is None else self.classifier(pooled)


def from_config(model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> ResNet:
    """The ResNet `config.model` (depth, stem, width, dtype, kernels) describes."""
    if model.kernels not in KERNEL_NAMES:
        raise ConfigError(
            f"unknown config.model.kernels={model.kernels!r}: use one of {list(KERNEL_NAMES)}."
        )
    kernels = kernels_for(model.kernels)
    return ResNet(
        model.depth,
        stem=model.stem,
        width=model.width,
        dtype=COMPUTE_DTYPES[model.dtype],
        conv=kernels.conv,
        norm=kernels.norm,
        pool=kernels.pool,
        rngs=rngs,
    )

"""Analytic model FLOPs of a pretraining step, the numerator of the benchmark's MFU.

Counted: every convolution and matmul of the model as `selfsup` builds it, at 2 FLOPs per
multiply-add. A ResNet (v1.5: the stride on the 3x3 conv, a 1x1 projection shortcut where a
block changes shape): every kernel tap at every output position (padding taps included, as cuDNN
and oneDNN compute them). A ViT: the patch embedding and, in every block over all its tokens
(the class token too), qkv, the attention scores q @ k^T and the weighted values weights @ v
(all heads), the output projection and the MLP's fc1 and fc2. The heads: SimCLR's projection
head, or relative patch's embedding and fusion head. A training step is 3x the forward pass
(forward, input gradient, weight gradient), the usual MFU convention, although nobody needs the
first layer's input gradient. Left out: normalisation (BatchNorm, LayerNorm, the ViT's final
norm), activations (ReLU, GELU), softmax, pooling, position embeddings, the loss and the
optimizer (elementwise work: well under 1% of a ResNet step; XLA's count of a ViT step is 1.03x
this one for ViT-S/16 at 224 px, 1.06x for ViT-Ti/4 at 32 px).
XLA's cost analysis counts differently (it skips padding taps, adds elementwise ops and counts
the matmul paths' padding products): the benchmark prints both.
"""

from __future__ import annotations

import math

import ml_collections

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
# (width, blocks) of timm's ViTs, as selfsup.models.vit.SIZES; the MLP is 4x as wide.
VIT_SIZES = {"vit_tiny": (192, 12), "vit_small": (384, 12), "vit_base": (768, 12)}
VIT_MLP_RATIO = 4


def resnet_macs(depth: int, stem: str, width: float, size: int) -> int:
    """Forward multiply-adds of one `size` x `size` image through the encoder (no classifier)."""
    kind, counts = BLOCKS[depth]
    widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
    if stem == "imagenet":  # 7x7/2 conv, then a 3x3/2 max-pool.
        h = math.ceil(size / 2)
        macs = h * h * 49 * 3 * widths[0]
        h = math.ceil(h / 2)
    else:  # 3x3/1 conv.
        h = size
        macs = h * h * 9 * 3 * widths[0]
    cin = widths[0]
    for stage, (w, count) in enumerate(zip(widths, counts)):
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            ho = math.ceil(h / stride)  # Every conv pads (k - 1) // 2 per side.
            if kind == "bottleneck":
                cout = 4 * w
                macs += h * h * cin * w + ho * ho * 9 * w * w + ho * ho * w * cout
            else:
                cout = w
                macs += ho * ho * 9 * cin * w + ho * ho * 9 * w * w
            if stride != 1 or cin != cout:
                macs += ho * ho * cin * cout  # 1x1 projection shortcut.
            cin, h = cout, ho
    return macs


def vit_macs(size: str, patch: int, image: int) -> int:
    """Forward multiply-adds of one `image` x `image` image through a ViT encoder of `size` with
    `patch` x `patch` patches (no classifier): the patch embedding, then each block's qkv,
    attention scores, weighted values, output projection and MLP over its 1 + patches tokens."""
    width, blocks = VIT_SIZES[size]
    patches = (image // patch) ** 2
    tokens = 1 + patches
    embedding = patches * 3 * patch**2 * width
    dense = tokens * width * width * (3 + 1 + 2 * VIT_MLP_RATIO)  # qkv, proj, fc1 and fc2.
    attention = 2 * tokens * tokens * width  # q @ k^T and weights @ v, summed over the heads.
    return embedding + blocks * (dense + attention)


def encoder_macs(model: ml_collections.ConfigDict, size: int) -> int:
    """Forward multiply-adds of one `size` x `size` image through the encoder `model` names."""
    if model.name == "resnet":
        return resnet_macs(model.depth, model.stem, model.width, size)
    return vit_macs(model.name, model.patch_size, size)


def feature_dim(model: ml_collections.ConfigDict) -> int:
    if model.name != "resnet":
        return VIT_SIZES[model.name][0]  # The class token.
    expansion = 4 if BLOCKS[model.depth][0] == "bottleneck" else 1
    return expansion * max(1, round(STAGE_WIDTHS[-1] * model.width))


def dense_macs(dims: list[int]) -> int:
    """Multiply-adds of a chain of dense layers dims[0] -> dims[1] -> ... for one row."""
    return sum(a * b for a, b in zip(dims, dims[1:]))


def forward_macs_per_image(config: ml_collections.ConfigDict) -> int:
    """Multiply-adds of the task model's forward pass for one image (its 2 views or 9 patches);
    the benchmark's models have no online probe."""
    model, features = config.model, feature_dim(config.model)
    if config.task == "simclr":
        c = config.simclr
        head = dense_macs([features] + [c.proj_hidden_dim] * (c.proj_layers - 1) + [c.proj_out_dim])
        encoder = encoder_macs(model, config.image_size)
        return 2 * (encoder + head)
    if config.task == "relpatch":
        c = config.relpatch
        encoder = encoder_macs(model, c.patch_size)
        pairs = 8 * dense_macs([2 * c.embed_dim, c.fusion_hidden_dim, 8])
        return 9 * (encoder + features * c.embed_dim) + pairs
    raise ValueError(f"no FLOP count for task {config.task!r}")


def train_step_flops(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one training step of `config.batch_size` images."""
    return 3 * 2 * forward_macs_per_image(config) * config.batch_size

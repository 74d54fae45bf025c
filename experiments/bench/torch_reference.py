"""A plain PyTorch version of the measured networks and losses, NCHW, for the benchmark.

The same architecture and loss as `selfsup` (ResNet v1.5 with the CIFAR or ImageNet stem, or
timm's `VisionTransformer`, which `selfsup.models.vit` reproduces; SimCLR's bias-free
Dense+BatchNorm projection head and NT-Xent over both views; relpatch's embedding, patch-pair
head and 8-way cross-entropy), written the way a PyTorch user would, so the comparison measures
the frameworks, not two different models.
"""

from __future__ import annotations

import ml_collections
import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCK_COUNTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
CENTRE = 4


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_ch, momentum=0.1, eps=1e-5)]


class Block(nn.Module):
    """BasicBlock (two 3x3) or, with `bottleneck`, 1x1-3x3(strided)-1x1 expanding by 4."""

    def __init__(self, in_ch: int, width: int, stride: int, *, bottleneck: bool):
        super().__init__()
        out_ch = width * 4 if bottleneck else width
        if bottleneck:
            layers = [
                *conv_bn(in_ch, width, 1, 1),
                nn.ReLU(inplace=True),
                *conv_bn(width, width, 3, stride),
                nn.ReLU(inplace=True),
                *conv_bn(width, out_ch, 1, 1),
            ]
        else:
            layers = [
                *conv_bn(in_ch, width, 3, stride),
                nn.ReLU(inplace=True),
                *conv_bn(width, width, 3, 1),
            ]
        self.residual = nn.Sequential(*layers)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_ch == out_ch
            else nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: int, stem: str, width: float):
        super().__init__()
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        if stem == "imagenet":
            layers = [
                *conv_bn(3, widths[0], 7, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, padding=1),
            ]
        else:
            layers = [*conv_bn(3, widths[0], 3, 1), nn.ReLU(inplace=True)]
        in_ch = widths[0]
        for i, (w, count) in enumerate(zip(widths, BLOCK_COUNTS[depth])):
            for j in range(count):
                layers.append(Block(in_ch, w, 2 if i > 0 and j == 0 else 1, bottleneck=depth == 50))
                in_ch = w * 4 if depth == 50 else w
        self.body = nn.Sequential(*layers)
        self.num_features = in_ch  # timm's name for it.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def encoder(model: ml_collections.ConfigDict) -> nn.Module:
    """The encoder `config.model` names: this file's ResNet, or timm's ViT (features: the class
    token after the final norm, as `selfsup.models.vit`'s)."""
    if model.name == "resnet":
        return ResNet(model.depth, model.stem, model.width)
    # Here, so only a ViT row needs timm (the `bench` extra installs torch alone). This file runs
    # in the benchmark's PyTorch workers only: importing timm crashes a process that has
    # imported TensorFlow.
    import timm

    return timm.create_model(
        f"{model.name}_patch16_224",  # Width, depth and heads; patch and image size below.
        num_classes=0,
        patch_size=model.patch_size,
        img_size=model.image_size,
    )


class SimCLR(nn.Module):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__()
        c = config.simclr
        self.encoder = encoder(config.model)
        dims = [self.encoder.num_features] + [c.proj_hidden_dim] * (c.proj_layers - 1)
        layers = []
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU()]
        layers += [nn.Linear(dims[-1], c.proj_out_dim, bias=False), nn.BatchNorm1d(c.proj_out_dim)]
        self.projection = nn.Sequential(*layers)
        self.temperature = c.temperature

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """x [2N, C, H, W], the two views of image i at rows 2i and 2i+1 -> NT-Xent."""
        z = F.normalize(self.projection(self.encoder(x)).float(), dim=1)
        z1, z2 = z[0::2], z[1::2]
        n = z1.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        labels = torch.arange(n, device=z.device)
        aa = (z1 @ z1.T / self.temperature).masked_fill(self_mask, float("-inf"))
        bb = (z2 @ z2.T / self.temperature).masked_fill(self_mask, float("-inf"))
        ab, ba = z1 @ z2.T / self.temperature, z2 @ z1.T / self.temperature
        loss_a = F.cross_entropy(torch.cat([ab, aa], dim=1), labels)
        loss_b = F.cross_entropy(torch.cat([ba, bb], dim=1), labels)
        return loss_a + loss_b


class RelPatch(nn.Module):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__()
        m, c = config.model, config.relpatch
        self.encoder = encoder(m)
        self.embed = nn.Linear(self.encoder.num_features, c.embed_dim)
        self.hidden = nn.Linear(2 * c.embed_dim, c.fusion_hidden_dim)
        self.bn = nn.BatchNorm1d(c.fusion_hidden_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.fusion_hidden_dim, len(NEIGHBOURS))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """x [9N, C, h, w], the 9 patches of image i at rows 9i..9i+8 -> 8-way cross-entropy."""
        e = self.embed(self.encoder(x)).float()
        e = e.reshape(-1, 9, e.shape[-1])
        centre = e[:, CENTRE : CENTRE + 1].expand(-1, len(NEIGHBOURS), -1)
        pairs = torch.cat([e[:, list(NEIGHBOURS)], centre], dim=-1).flatten(0, 1)
        logits = self.out(self.dropout(F.relu(self.bn(self.hidden(pairs)))))
        labels = torch.arange(len(NEIGHBOURS), device=x.device).repeat(e.shape[0])
        return F.cross_entropy(logits, labels)


def build(config: ml_collections.ConfigDict) -> nn.Module:
    return RelPatch(config) if config.task == "relpatch" else SimCLR(config)

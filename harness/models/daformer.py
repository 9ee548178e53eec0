"""DAFormer: a hierarchical transformer encoder (timm PVTv2) and the DAFormer context-aware fusion head.

Head (Hoyer et al. 2022, `DAFormerHead`): every encoder stage is embedded per token to `embed_dim`
channels (a linear layer = 1x1 conv, 256 in the paper), upsampled to the resolution of the first
stage (1/4), concatenated, then fused by parallel ASPP branches with dilations (1, 6, 12, 18): 1x1
conv for dilation 1, depthwise-separable 3x3 convs (depthwise + pointwise, each BN + ReLU) otherwise.
The branches are concatenated, a 3x3 conv (BN + ReLU) reduces them to `embed_dim`, then dropout 0.1
and a 1x1 classifier. timm has no MiT; `pvt_v2_b0..b5` have the same stage widths (b1-b5: 64, 128,
320, 512). `embed_dim` is an option so a CPU-scale model stays small (e.g. 64).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.models.base import Segmentor, create_encoder


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def depthwise_separable(cin: int, cout: int, dilation: int) -> nn.Sequential:
    """mmcv's DepthwiseSeparableConvModule: 3x3 depthwise (BN, ReLU), then 1x1 pointwise (BN, ReLU)."""
    return nn.Sequential(conv_bn_relu(cin, cin, 3, dilation=dilation, groups=cin), conv_bn_relu(cin, cout, 1))


def classifier(channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)  # mmseg's conv_seg init
    nn.init.zeros_(conv.bias)
    return conv


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DAFormerHead(nn.Module):
    """`fusion="aspp"`: the separable ASPP branches and the 3x3 bottleneck (DAFormer's sep_aspp);
    `"conv"`: one 1x1 conv (BN, ReLU) from the concatenated stages (HRDA's scale-attention head)."""

    def __init__(self, in_channels: list[int], num_classes: int, embed_dim: int = 256,
                 fusion_dilations: tuple[int, ...] = (1, 6, 12, 18), dropout: float = 0.1,
                 fusion: str = "aspp") -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        fused = embed_dim * len(in_channels)
        if fusion == "conv":
            fusion_dilations = (1,)
        self.fusion = nn.ModuleList(
            conv_bn_relu(fused, embed_dim, 1) if d == 1 else depthwise_separable(fused, embed_dim, d)
            for d in fusion_dilations)
        self.bottleneck = (conv_bn_relu(embed_dim * len(fusion_dilations), embed_dim, 3) if fusion == "aspp"
                           else nn.Identity())
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = classifier(embed_dim, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = torch.cat([resize_to(embed(f), size) for embed, f in zip(self.embed, features)], dim=1)
        x = torch.cat([branch(x) for branch in self.fusion], dim=1)
        return self.classifier(self.dropout(self.bottleneck(x)))


class DAFormer(Segmentor):
    arch = "daformer"

    class Options(Segmentor.Options):
        embed_dim: int = Field(256, ge=1)
        fusion_dilations: tuple[int, ...] = Field((1, 6, 12, 18), min_length=1)
        dropout: float = Field(0.1, ge=0, lt=1)
        out_indices: tuple[int, ...] = (-4, -3, -2, -1)  # the encoder stages fed to the head

    def __init__(self, backbone: str = "pvt_v2_b5", num_classes: int = 19,
                 pretrained: str | Path | None = None, **options) -> None:
        opts = self.parse_options(options)
        encoder = create_encoder(backbone, out_indices=opts.out_indices, pretrained=pretrained,
                                 **opts.encoder_options)
        head = DAFormerHead(encoder.feature_info.channels(), num_classes, opts.embed_dim,
                            tuple(opts.fusion_dilations), opts.dropout)
        super().__init__(encoder, head, backbone, num_classes)
        self.options = opts

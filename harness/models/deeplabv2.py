"""DeepLab-v2: a dilated timm ResNet (output stride 8) and the ASPP classifier.

The classifier is DeepLab-v2's (Chen et al. 2017; DACS/DAFormer `DLV2Head`): parallel 3x3 convolutions
from the last stage straight to class logits, with dilations (6, 12, 18, 24), summed. MIC and DAFormer's
DeepLab-v2 baselines use the reduced variant `aspp_dilations=(6, 12)`. `encode` exposes one stage
(the last, e.g. ResNet layer4 at stride 8); auxiliary tasks rely on that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from timm.layers import GroupNorm
from torch import nn

from harness.models.base import Segmentor, create_encoder


class ASPPClassifier(nn.Module):
    """Sum of parallel dilated 3x3 convolutions, in_channels -> num_classes (with bias, no norm)."""

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations)
        for conv in self.convs:  # DeepLab-v2's classifier init
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(Segmentor):
    arch = "deeplabv2"

    class Options(Segmentor.Options):
        aspp_dilations: tuple[int, ...] = Field((6, 12, 18, 24), min_length=1)  # (6, 12): reduced variant
        output_stride: Literal[8, 16, 32] = 8
        norm: Literal["batch", "group"] = "batch"  # group: timm GroupNorm(32), no running statistics

    def __init__(self, backbone: str = "resnet101", num_classes: int = 19,
                 pretrained: str | Path | None = None, **options) -> None:
        opts = self.parse_options(options)
        norm = {"norm_layer": GroupNorm} if opts.norm == "group" else {}
        encoder = create_encoder(backbone, out_indices=(-1,), pretrained=pretrained,
                                 output_stride=opts.output_stride, **norm, **opts.encoder_options)
        channels = encoder.feature_info.channels()[-1]
        head = ASPPClassifier(channels, num_classes, tuple(opts.aspp_dilations))
        super().__init__(encoder, head, backbone, num_classes)
        self.options = opts

"""SegFormer: the same hierarchical encoders as DAFormer with the lighter all-MLP head.

Head (Xie et al. 2021, `SegFormerHead`): every stage is embedded per token to `embed_dim` channels
(768 for MiT-B1..B5 in the paper, 256 for B0), upsampled to the first stage's resolution (1/4),
concatenated (deepest first, as in the original), fused by a 1x1 conv (BN + ReLU), dropout 0.1, and a
1x1 classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from harness.models.base import Segmentor, create_encoder
from harness.models.daformer import classifier, conv_bn_relu, resize_to


class SegFormerHead(nn.Module):
    def __init__(self, in_channels: list[int], num_classes: int, embed_dim: int = 768,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = conv_bn_relu(embed_dim * len(in_channels), embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = classifier(embed_dim, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        embedded = [resize_to(embed(f), size) for embed, f in zip(self.embed, features)]
        x = self.fuse(torch.cat(embedded[::-1], dim=1))
        return self.classifier(self.dropout(x))


class SegFormer(Segmentor):
    arch = "segformer"

    class Options(Segmentor.Options):
        embed_dim: int = Field(768, ge=1)
        dropout: float = Field(0.1, ge=0, lt=1)
        out_indices: tuple[int, ...] = (-4, -3, -2, -1)

    def __init__(self, backbone: str = "pvt_v2_b5", num_classes: int = 19,
                 pretrained: str | Path | None = None, **options) -> None:
        opts = self.parse_options(options)
        encoder = create_encoder(backbone, out_indices=opts.out_indices, pretrained=pretrained,
                                 **opts.encoder_options)
        head = SegFormerHead(encoder.feature_info.channels(), num_classes, opts.embed_dim, opts.dropout)
        super().__init__(encoder, head, backbone, num_classes)
        self.options = opts

"""HRDA: multi-resolution training and inference around a single-scale segmentor (Hoyer et al. 2022).

The official code is lhoyer/HRDA (`mmseg/models/segmentors/hrda_encoder_decoder.py`,
`mmseg/models/decode_heads/hrda_head.py`, `configs/hrda/gtaHR2csHR_hrda.py`); MIC's `seg/` carries the same.
One encoder and one decode head (the base architecture's, e.g. DAFormer) see two views of an image:

1. the **context** view: the whole input resized by `context_scale` (0.5);
2. the **detail** view: at training time a random `detail_crop` (512 of a 1024 crop) of the full-resolution
   input, its corners on a grid of `crop_coord_divisible` pixels (8 = output stride 4 / context scale 0.5,
   so context and detail logits align); at inference the whole input in overlapping `detail_crop` windows
   (stride half a window), whose logits are averaged where they overlap (`slide_detail`);
3. a **scale-attention** head (a second head of the base's kind: DAFormer's with a 1x1 conv fusion and
   `attention_embed_dim` channels, DeepLab-v2's ASPP classifier, SegFormer's MLP head) maps the context
   features to a sigmoid weight per class (`attention_classwise`) or per pixel, set to 0 outside the
   detail crop at training time;
4. fusion at the detail resolution: `fused = a * detail + up((1 - a) * context)`, with `a` upsampled too.

The passes, each a method: `encode_views(x)` (training: the context view and a random detail crop
through the one encoder, a `Views`), `decode_views(views)` (both heads, the attention, the fusion),
`views_loss(views, criterion)` (the fused loss weighted 1 - lambda_d plus the detail crop's own loss
weighted `detail_loss_weight`, lambda_d = 0.1: HRDAHead.losses); `seg_loss(x, criterion)` chains the
three, as the official `forward_train` does. `predict(x)` is the inference path (official `encode_decode`,
which `generate_pseudo_label` calls: context + detail windows, fused) whatever the modules' training
flags; `forward(x)` is `predict` in eval mode and a training pass's fused logits in training mode.

These override the segmentor interface that the hosts and the tasks call on every model (harness/models/
base.py; `views_loss` takes the label's `size` and needs none: it sizes the fused and the detail logits
itself). Where the auxiliary tasks and the feature distance look: `view_features(x)` = the context view's
encoder stages (HRDA's `feature_scale` 0.5: FD, contrastive, mim recon); MIC goes through `detail_box` and
`seg_loss` (MIC's module calls the student's `forward_train`); MFM rebuilds both views of a `Views`
(`Views.map`) and decodes them with `views_loss`. `encode` / `decode` stay the base's single-scale passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.models.base import Segmentor

Box = tuple[int, int, int, int]  # y1, y2, x1, x2 in input pixels


@dataclass
class Views:
    """The encoder stages (shallow to deep, with their autograd graph) of one training pass's two views:
    the context view (the whole input at `context_scale`) and the detail crop cut at `box`. A host keeps
    them for a task that reuses its pass (methods/base.py); MFM rebuilds each view (methods/mfm.py)."""

    context: list[torch.Tensor]
    detail: list[torch.Tensor]
    box: Box

    def map(self, fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> Views:
        """`fn` applied to each view's stages (context first), the box kept."""
        return Views(fn(self.context), fn(self.detail), self.box)


class HRDA(Segmentor):
    arch = "hrda"

    class Options(Segmentor.Options):
        base: Literal["daformer", "deeplabv2", "segformer"] = "daformer"
        base_options: dict[str, Any] = Field(default_factory=dict)  # the base architecture's model.options
        context_scale: float = Field(0.5, gt=0, lt=1)    # HRDA scales [1, 0.5]
        context_antialias: bool = False                  # official: plain bilinear (mmseg resize); an ablation
        detail_crop: tuple[int, int] = (512, 512)        # hr_crop_size, input pixels (height, width)
        crop_coord_divisible: int | None = Field(None, ge=1)  # None: output stride / context_scale
        detail_loss_weight: float = Field(0.1, ge=0, lt=1)  # hr_loss_weight (lambda_d)
        attention_classwise: bool = True
        attention_embed_dim: int = Field(256, ge=1)
        fixed_attention: float | None = Field(None, ge=0, le=1)  # a constant attention, no head (an ablation)
        slide_detail: bool = True                        # hr_slide_overlapping (windows overlap by half)

    def __init__(self, backbone: str | None = None, num_classes: int = 19,
                 pretrained: str | Path | None = None, **options) -> None:
        from harness.models import create_segmentor

        opts = self.parse_options(options)
        base_options = dict(opts.base_options)
        base_options["encoder_options"] = {**base_options.get("encoder_options", {}), **opts.encoder_options}
        base = create_segmentor(opts.base, backbone=backbone, num_classes=num_classes, pretrained=pretrained,
                                **base_options)
        super().__init__(base.encoder, base.head, base.backbone, num_classes)
        self.options = opts
        self.base_arch = opts.base
        self.attention = None if opts.fixed_attention is not None else attention_head(
            base, 1 if not opts.attention_classwise else num_classes, opts.attention_embed_dim)
        os_ = self.decoder_stride
        self.divisible = opts.crop_coord_divisible or round(os_ / opts.context_scale)
        if self.divisible % round(os_ / opts.context_scale):
            raise ValueError(f"model.options.crop_coord_divisible={self.divisible} must be a multiple of the "
                             f"output stride / context scale = {round(os_ / opts.context_scale)}, or the "
                             "context and detail logits do not align")

    @classmethod
    def check_crop(cls, options: dict[str, Any], crop: tuple[int, int]) -> str | None:
        ch, cw = cls.parse_options(options).detail_crop
        if ch > crop[0] or cw > crop[1]:
            return (f"model.options.detail_crop {[ch, cw]} is larger than data.crop {list(crop)}: the detail "
                    "crop is cut from the training crop (HRDA: 512 of 1024)")
        return None

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The scale attention belongs to the decoder (HRDA's decode head holds it: lr_mult 10)."""
        groups = super().param_groups()
        if self.attention is not None:
            groups["decoder"] = groups["decoder"] + list(self.attention.parameters())
        return groups

    # ----------------------------------------------------------------------------------------------
    # the two views and their fusion

    def detail_box(self, height: int, width: int) -> Box:
        """A random detail crop of the input, its corners on the `divisible` grid (get_crop_bbox)."""
        ch, cw = self.options.detail_crop
        if (ch, cw) == (height, width):
            return 0, height, 0, width
        d = self.divisible
        y = int(torch.randint(0, max((height - ch + 1) // d, 1), ())) * d  # as get_crop_bbox: offsets
        x = int(torch.randint(0, max((width - cw + 1) // d, 1), ())) * d   # 0, d, ... below margin + 1
        return y, y + ch, x, x + cw

    def check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        ch, cw = self.options.detail_crop
        if h < ch or w < cw or h % self.divisible or w % self.divisible:
            raise ValueError(f"HRDA input {h}x{w}: needs at least the detail crop {ch}x{cw} and sides "
                             f"divisible by {self.divisible} (output stride / context scale)")

    def context_view(self, x: torch.Tensor) -> torch.Tensor:
        """The context view: the whole input resized by `context_scale` (bilinear, as the official mmseg
        `resize`; with `context_antialias` low-pass filtered first, as PIL's bilinear resize of the loader)."""
        return F.interpolate(x, scale_factor=self.options.context_scale, mode="bilinear", align_corners=False,
                             antialias=self.options.context_antialias)

    def view_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The one view whose encoder stages the feature distance and the auxiliary tasks read: the context
        view (HRDA's `feature_scale` 0.5, "LR features for the Feature Distance as in the original
        DAFormer"), which covers the whole input, so labels area-downscale onto it as onto one view."""
        return self.encode(self.context_view(x))

    def encode_views(self, x: torch.Tensor, box: Box | None = None) -> Views:
        """The training pass's encoder: the context view and a random detail crop (`detail_box`, or `box`
        when the caller drew it already), each through the one encoder (official `_forward_train_features`)."""
        self.check_input(x)
        context = self.view_features(x)
        box = box if box is not None else self.detail_box(*x.shape[-2:])
        y1, y2, x1, x2 = box
        return Views(context, self.encode(x[:, :, y1:y2, x1:x2]), box)

    def view_stages(self, views: Views) -> list[torch.Tensor]:
        """The context view's stages of a training pass (those `view_features` gives)."""
        return views.context

    def context(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The context view's logits and scale attention (sigmoid; `fixed_attention` everywhere when set, as
        HRDAHead's `fixed_attention`), both at its decoder resolution."""
        logits = self.decode(feats)
        if self.attention is None:
            return logits, torch.full_like(logits[:, :1], self.options.fixed_attention)
        return logits, torch.sigmoid(self.attention(feats))

    def decode_views(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused logits at the decoder resolution of the whole input, the detail crop's logits): the head
        on each view, the scale attention on the context view's features, fused (HRDAHead.forward)."""
        context, attention = self.context(views.context)
        detail = self.decode(views.detail)
        return self.fuse(context, attention, detail, views.box), detail

    def views_loss(self, views: Views, criterion, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(1 - lambda_d) * the fused loss + lambda_d * the detail crop's loss (HRDAHead.losses); the fused
        logits are upsampled to the input size, the detail logits to the crop's."""
        fused, detail = self.decode_views(views)
        s = self.decoder_stride
        fused = F.interpolate(fused, size=(fused.shape[-2] * s, fused.shape[-1] * s), mode="bilinear",
                              align_corners=False)
        loss = criterion(fused, None)
        w = self.options.detail_loss_weight
        if w == 0:
            return loss
        y1, y2, x1, x2 = views.box
        detail = F.interpolate(detail, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        return (1 - w) * loss + w * criterion(detail, views.box)

    def detail_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Detail logits of the whole input: overlapping `detail_crop` windows, stride half a window (or
        side by side without `slide_detail`), encoded as one batch, logits averaged where they overlap."""
        ch, cw = self.options.detail_crop
        sh, sw = (ch // 2, cw // 2) if self.options.slide_detail else (ch, cw)
        b, _, h, w = x.shape
        boxes = []
        for i in range(max(h - ch + sh - 1, 0) // sh + 1):
            for j in range(max(w - cw + sw - 1, 0) // sw + 1):
                y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
                boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        logits = self.decode(self.encode(crops))
        s = self.decoder_stride
        out = logits.new_zeros(b, logits.shape[1], h // s, w // s)
        count = logits.new_zeros(1, 1, h // s, w // s)
        for k, (y1, y2, x1, x2) in enumerate(boxes):
            out[:, :, y1 // s:y2 // s, x1 // s:x2 // s] += logits[k * b:(k + 1) * b]
            count[:, :, y1 // s:y2 // s, x1 // s:x2 // s] += 1
        return out / count

    def fuse(self, context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor,
             box: Box | None) -> torch.Tensor:
        """`a * detail + up((1 - a) * context)` at the detail resolution; with a training `box`, the
        attention is 0 outside it and `detail` (the crop's logits) is placed at the box."""
        s, up = self.decoder_stride, 1 / self.options.context_scale
        if box is not None:
            y1, y2, x1, x2 = (int(v / (s * up)) for v in box)  # truncated, as the official scale_box
            mask = torch.zeros_like(attention[:, :1])
            mask[:, :, y1:y2, x1:x2] = 1
            attention = attention * mask
        context = F.interpolate((1 - attention) * context, scale_factor=up, mode="bilinear", align_corners=False)
        attention = F.interpolate(attention, scale_factor=up, mode="bilinear", align_corners=False)
        if box is not None:
            placed = torch.zeros_like(context)
            y1, y2, x1, x2 = (v // s for v in box)
            placed[:, :, y1:y2, x1:x2] = detail
            detail = placed
        return attention * detail + context

    # ----------------------------------------------------------------------------------------------
    # the segmentor interface

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The inference path (official `encode_decode`, which `generate_pseudo_label` calls), whatever
        the modules' training flags: the context view and the input's detail windows, fused, at the
        input size. The teacher's pseudo-labels come from here, also when its BatchNorm runs in training
        mode (`method.teacher_bn: batch`)."""
        self.check_input(x)
        context, attention = self.context(self.view_features(x))
        fused = self.fuse(context, attention, self.detail_windows(x), None)
        return F.interpolate(fused, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode: `predict`. Training mode: the fused logits of a training pass (a random detail crop)."""
        if not self.training:
            return self.predict(x)
        fused, _ = self.decode_views(self.encode_views(x))
        return F.interpolate(fused, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def seg_loss(self, x: torch.Tensor, criterion, box: Box | None = None) -> torch.Tensor:
        """The training pass's loss: `views_loss(encode_views(x, box), criterion)`."""
        return self.views_loss(self.encode_views(x, box), criterion)


def attention_head(base: Segmentor, channels: int, embed_dim: int) -> nn.Module:
    """The scale-attention head, of the base's kind (HRDAHead's attn_cfg): DAFormer's head with a 1x1
    conv fusion and `embed_dim` channels; DeepLab-v2's ASPP classifier; SegFormer's head."""
    in_channels = base.feature_channels
    if base.arch == "daformer":
        from harness.models.daformer import DAFormerHead

        return DAFormerHead(in_channels, channels, embed_dim, fusion="conv", dropout=base.options.dropout)
    if base.arch == "deeplabv2":
        from harness.models.deeplabv2 import ASPPClassifier

        return ASPPClassifier(in_channels[-1], channels, tuple(base.options.aspp_dilations))
    from harness.models.segformer import SegFormerHead

    return SegFormerHead(in_channels, channels, base.options.embed_dim, base.options.dropout)

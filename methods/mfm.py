"""`mfm`: Masked Feature Modeling (arXiv 2509.13801; v2 calls it MRM) as an auxiliary task.

Training only: an image -> student encoder -> stage features -> `Rebuilder` (embed the deepest stage,
mask tokens with a learnable mask token, transformer blocks with a fixed 2-D sin-cos position embedding,
per-stage up-projectors back to every stage's resolution and width, merge: visible positions keep the
encoder's features, masked ones take the prediction) -> the student's own `decode` -> cross-entropy
against the host's labels, weighted by the host's pixel weight. The Rebuilder lives in this task object
only, so the evaluated network is exactly the host's (no extra parameters, no extra FLOPs).

What the released code says and what is inferred (../shared/reference/paper-scale.md P1/P2-10):
- Released (`rebuilder.py` of Wenlve-Zhou/MRM): the Rebuilder itself, matched here layer for layer, with
  a fresh Bernoulli keep mask (`rand > 0.4`) per call and the merge `src * mask + pred * (1 - mask)` at
  every stage, decoded by the segmentor's own head. Nothing in it selects pixels for the loss, and
  mmseg's decode-head loss covers every pixel, so the merge implies the loss on all pixels (`loss_on:
  all`). The training integration (`mrm_training`, `uda/dacs.py`, named in MRM's README) is not in the
  released repository.
- Inferred: which image MFM sees. The one hint is the comment in the Rebuilder's `Transformer.forward`,
  "Remove the Source Feature in Mixture and Add Learnable Token in the Position", which suggests the
  features come from the host's ClassMix **mixed** image (with its mixed label and weight), and MRM's
  README says `dacs.py` holds "RAM optimization" details (plausibly one encoder pass shared with the mix
  loss). `image: mixed` is the reading of that comment, and every scale sets it (harness/scales.py: at
  the paper's size it costs 0.54x MIC's extra FLOPs where the clean target costs 1.05x; at the `cpu`
  scale DeepLab-v2 collapsed with the clean target, seed 0: README `mfm`). `image: target` (the clean
  target image and the teacher's pseudo-labels) stays the task's default, the earlier recipe.

Why `loss_on` matters: with `all`, the visible positions keep the encoder's own features, so at the
visible pixels the loss is the host's pseudo-label self-training again, on the un-mixed target image
(`image: target`), with no masking in between: 60% of the pixels in expectation at mask ratio 0.4.
At the CPU scale (64x128 images, a 2x4 token grid) DeepLab-v2 + MFM collapsed with it (reports/main:
10.4 mIoU against DACS's 19.3; sidewalk IoU 31.0 -> 0.9, car 42.6 -> 8.4, road 81.9 -> 50.2, as when
road swallows other classes). `masked` gives weight 0 to the pixels whose deepest-stage token was kept; the mean
still runs over all pixels (as `weighted_ce`), so per masked pixel the loss is the same as with `all`:
the two options differ exactly by the visible pixels' terms.

Options (`method.aux.mfm.options`): `image` (`target` | `mixed`), `loss_on` (`all` | `masked`),
`mask_ratio` (0.4), `mask_unit` (input pixels per token side, 32), `preset` (`tiny` | `small` | `base`;
`base` is the paper's 2 blocks x 512 wide, 16 heads) or explicit `depth` / `width` / `heads`,
`mlp_ratio`, and `color_aug` (`image: target` only: the host's strong augmentation of the target image
instead of the clean one; the mixed image is already augmented by the host).

With `image: mixed` the task declares `reuses = {"mixed_features"}`: the `dacs` host keeps the student's
encoder pass of the mixed image (with its graph) for it, so MFM adds no encoder forward pass (its loss
still back-propagates through the encoder on its own, as the engine back-propagates each loss); the
gradients are those of a fresh encode of the same image (tests/test_mfm_recipe.py). Step cost against
`dacs` and MIC at the `cpu` scale: benchmarks/bench_aux_step.py and the README's `mfm` paragraph.
Two differences from a fresh encode: BatchNorm running statistics are updated once for the mixed image
(not twice), and drop-path / dropout, where on, share the host pass's draw.

On HRDA (harness/models/hrda.py) the student's training pass has two views, each through the one
encoder: the context view (the whole image at scale 0.5) and a random detail crop at full resolution.
udabench feeds the Rebuilder each view's stages separately (one Rebuilder, a fresh keep mask per view)
and decodes the two rebuilt views through HRDA's own heads, scale attention and fusion, with HRDA's own
loss (the fused logits weighted 1 - lambda_d, the detail crop's weighted lambda_d, label and weight
cropped for it): the host's loss on the encoder's views, with rebuilt features in their place. Why per
view: the released Rebuilder hard-codes 16x16 deepest maps, and at HRDA's paper sizes each view gives
exactly that (context 1024 x 0.5 = 512 and detail crop 512, over stride 32: 16; with mask_unit 32 the
token grid is the view's side / 32 = 16x16), while a whole 1024 crop would give 32x32; the fused logits
have no encoder features to rebuild. tests/test_hrda_tasks.py checks the grids at the paper's sizes and
at 1/8 of them (128 crop, 64 detail crop, mask_unit 4: 16x16 for both views). `image: target`: a
training pass of the target view with its own detail crop; `image: mixed`: the host's pass of the mixed
image, both views and the host's crop box (`ctx.extras["mixed_features"]` is a `Views`), so MFM adds no
encoder pass on HRDA either. `loss_on: masked`: a fused pixel has weight 0 where every token it is
decoded from was kept (the context view's and, inside the crop, the detail crop's); a detail-crop pixel
where its detail token was kept. At demo/cpu HRDA's views are 64 pixels high (a 128x256 image's context
view 64x128, a 64 detail crop), so mask_unit 32 gives 2x4 and 2x2 tokens, as DAFormer's 64x128 input
gets 2x4 there. At smoke they are 32 pixels (a 64 crop's context view, a 32 detail crop): one token a
view, which `random_keep` keeps visible, so nothing is masked unless a test sets a smaller mask_unit.

Not published by the paper, and what udabench uses: lambda (the task's `method.aux.mfm.weight`: 1.0, like
MIC's), the Rebuilder's learning rate (`lr_mult` 10, the head multiplier; under mmseg it would be x10 only
if the module's name contained `head`), the start iteration (`start_iter` 0), and the two options above
(defaults `target`, `all`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from timm.layers import LayerNorm2d, build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from methods import register_aux
from methods._common import (
    crop,
    random_keep,
    require_mixed,
    require_pseudo_labels,
    target_view,
    weighted_ce,
)
from methods.base import AuxTask, StepContext

Box = tuple[int, int, int, int]  # y1, y2, x1, x2: HRDA's detail crop (harness/models/hrda.py)

# name -> (depth, width, heads)
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 128, 4),
    "small": (2, 256, 8),
    "base": (2, 512, 16),   # the released Rebuilder
}


def _xavier_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class Projector(nn.Module):
    """Token grid -> one encoder stage: a stack of stride-2 (transposed) convolutions with LayerNorm2d +
    GELU between them, halving the width per step down to a quarter, then a 1x1 convolution to the
    stage's width and a LayerNorm2d. `scale` = stage resolution / token grid (a power of two; below 1
    the stack down-samples with stride-2 convolutions)."""

    def __init__(self, in_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        steps = round(math.log2(scale))
        layers: list[nn.Module] = []
        c = in_channels
        for j in range(abs(steps)):
            if steps > 0:
                c_next = max(in_channels // min(2 ** (j + 1), 4), 1)
                layers.append(nn.ConvTranspose2d(c, c_next, kernel_size=4, stride=2, padding=1))
            else:
                c_next = c
                layers.append(nn.Conv2d(c, c_next, kernel_size=2, stride=2))
            if j < abs(steps) - 1:
                layers += [LayerNorm2d(c_next), nn.GELU()]
            c = c_next
        layers.append(nn.Conv2d(c, out_channels, kernel_size=1))
        self.fpn = nn.Sequential(*layers)
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fpn(x))


class Rebuilder(nn.Module):
    """Masks and rebuilds a segmentor's stage features (the MFM Rebuilder).

    `forward(feats, keep=None) -> (rebuilt, keep)`: `feats` are the encoder's stages (shallow to deep);
    `keep` is the `B x 1 x gh x gw` token keep mask (drawn with `mask_ratio` when None). Visible
    positions of every stage keep the encoder's features exactly; masked ones take the prediction.
    """

    def __init__(self, channels: list[int], strides: list[int], mask_unit: int = 32,
                 depth: int = 2, width: int = 512, heads: int = 16, mlp_ratio: float = 4.0,
                 mask_ratio: float = 0.4) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"Rebuilder: channels {channels} and strides {strides} must be non-empty "
                             "lists of the same length")
        for s in strides:
            scale = mask_unit / s
            if 2 ** round(math.log2(scale)) != scale:
                raise ValueError(
                    f"mfm: mask_unit {mask_unit} must be a power-of-two multiple or divisor of every "
                    f"encoder stage stride (strides {list(strides)})")
        self.mask_unit = mask_unit
        self.strides = list(strides)
        self.mask_ratio = mask_ratio
        self.width = width
        self.embed = nn.Linear(channels[-1], width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.apply(_xavier_linear)
        nn.init.normal_(self.mask_token, std=0.02)
        self.projectors = nn.ModuleList(
            Projector(width, c, (mask_unit / s)) for c, s in zip(channels, strides))
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def token_grid(self, deepest: torch.Tensor) -> tuple[int, int]:
        """Token grid for the deepest stage's feature map: one token per `mask_unit` input pixels."""
        f = self.strides[-1] / self.mask_unit
        h, w = deepest.shape[-2:]
        return max(1, round(h * f)), max(1, round(w * f))

    def pos_embed(self, gh: int, gw: int, like: torch.Tensor) -> torch.Tensor:
        key = (gh, gw, like.device, like.dtype)
        if key not in self._pos_cache:  # fixed (not learned), so not a parameter or buffer
            self._pos_cache[key] = build_sincos2d_pos_embed(
                [gh, gw], dim=self.width, device=like.device, dtype=like.dtype).unsqueeze(0)
        return self._pos_cache[key]

    def draw_keep(self, deepest: torch.Tensor) -> torch.Tensor:
        gh, gw = self.token_grid(deepest)
        return random_keep(deepest.shape[0], gh, gw, self.mask_ratio, deepest.device, deepest.dtype)

    def forward(self, feats: list[torch.Tensor], keep: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        if len(feats) != len(self.projectors):
            raise ValueError(f"Rebuilder built for {len(self.projectors)} stages, got {len(feats)}")
        deepest = feats[-1]
        gh, gw = self.token_grid(deepest)
        if keep is None:
            keep = self.draw_keep(deepest)
        b = deepest.shape[0]
        x = self.embed(deepest.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if x.shape[-2:] != (gh, gw):
            x = F.interpolate(x, size=(gh, gw), mode="bilinear", align_corners=False)
        tokens = x.flatten(2).transpose(1, 2)                      # B x N x D
        k = keep.flatten(2).transpose(1, 2)                         # B x N x 1
        tokens = tokens * k + self.mask_token * (1 - k)
        tokens = tokens + self.pos_embed(gh, gw, tokens)
        tokens = self.norm(self.blocks(tokens))
        y = tokens.transpose(1, 2).reshape(b, self.width, gh, gw)
        rebuilt = []
        for feat, proj in zip(feats, self.projectors):
            pred = proj(y)
            if pred.shape[-2:] != feat.shape[-2:]:
                pred = F.interpolate(pred, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            k_i = F.interpolate(keep, size=feat.shape[-2:], mode="nearest")
            rebuilt.append(feat * k_i + pred * (1 - k_i))
        return rebuilt, keep


@register_aux("mfm")
class MFM(AuxTask):
    """Masked Feature Modeling: CE of the student's decode of rebuilt features vs the host's labels."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        image: Literal["target", "mixed"] = "target"   # the clean target, or the host's ClassMix image
        loss_on: Literal["all", "masked"] = "all"       # pixels the CE covers
        mask_ratio: float = Field(0.4, ge=0, lt=1)
        mask_unit: int = Field(32, ge=1)
        preset: Literal["tiny", "small", "base"] = "base"
        depth: int | None = Field(None, ge=1)
        width: int | None = Field(None, ge=4)
        heads: int | None = Field(None, ge=1)
        mlp_ratio: float = Field(4.0, gt=0)
        color_aug: bool = False

        @model_validator(mode="after")
        def _shape(self) -> MFM.Options:
            _, width, heads = self.resolved()
            if width % 4:
                raise ValueError(f"width {width} must be a multiple of 4 (2-D sin-cos position embedding)")
            if width % heads:
                raise ValueError(f"width {width} must be divisible by heads {heads}")
            if self.color_aug and self.image == "mixed":
                raise ValueError("color_aug applies to image 'target' only: the mixed image already "
                                 "carries the host's strong augmentation")
            return self

        def resolved(self) -> tuple[int, int, int]:
            """(depth, width, heads): the preset, with any explicit value taking precedence."""
            d, w, h = PRESETS[self.preset]
            return self.depth or d, self.width or w, self.heads or h

    def __init__(self, options: dict[str, Any], model: nn.Module, num_classes: int) -> None:
        super().__init__(options, model, num_classes)
        depth, width, heads = self.opts.resolved()
        self.rebuilder = Rebuilder(list(model.feature_channels), list(model.feature_strides),
                                   mask_unit=self.opts.mask_unit, depth=depth, width=width, heads=heads,
                                   mlp_ratio=self.opts.mlp_ratio, mask_ratio=self.opts.mask_ratio)
        if self.opts.image == "mixed":  # the host's encoder pass of the mixed image (methods/base.py)
            self.reuses = frozenset({"mixed_features"})

    def features(self, ctx: StepContext) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(the student's training-pass encoder features of the image this task sees: a list of stages, or
        on HRDA a `Views` of its context view and detail crop; label; pixel weight)."""
        if self.opts.image == "target":
            label, weight = require_pseudo_labels(ctx, "mfm")
            return ctx.student.encode_views(target_view(ctx, self.opts.color_aug)), label, weight
        image, label, weight = require_mixed(ctx, "mfm")
        feats = ctx.extras.get("mixed_features")
        if feats is None:  # the host did not keep its pass of the mixed image: encode it again
            feats = ctx.student.encode_views(image)
        return feats, label, weight

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        # 1. the encoder's stage features of the image (clean target, or the host's mixed image); on HRDA
        #    its two views, the context view and the detail crop
        feats, label, weight = self.features(ctx)
        # 2. mask each view's deepest tokens and rebuild every stage of it (visible positions unchanged)
        keeps: list[torch.Tensor] = []

        def rebuild(stages: list[torch.Tensor]) -> list[torch.Tensor]:
            rebuilt, keep = self.rebuilder(list(stages))
            keeps.append(keep)
            return rebuilt

        rebuilt = feats.map(rebuild) if hasattr(feats, "map") else rebuild(feats)
        detail_box = getattr(feats, "box", None)

        # 3. the student's own head on the rebuilt features (HRDA: both heads, the scale attention, the
        #    fusion, and its fused + detail-crop loss), CE against the host's labels
        def criterion(logits: torch.Tensor, box: Box | None) -> torch.Tensor:
            w = crop(weight, box)
            if self.opts.loss_on == "masked":  # pixels whose every token was kept get weight 0
                w = w * (1 - visible(keeps, label.shape[-2:], detail_box, box))
            return weighted_ce(logits, crop(label, box), w)

        return {"ce": ctx.student.views_loss(rebuilt, criterion, label.shape[-2:])}


def visible(keeps: list[torch.Tensor], size: tuple[int, int], detail_box: Box | None,
            box: Box | None) -> torch.Tensor:
    """B x h x w, 1 where every view the logits are decoded from kept the pixel's token (the features
    there are the encoder's own): over the whole label (`box` None; on HRDA the context view's keep mask,
    times the detail crop's inside `detail_box`) or over the detail crop's own logits (`box`)."""
    if box is not None:
        return F.interpolate(keeps[1], size=(box[1] - box[0], box[3] - box[2]), mode="nearest")[:, 0]
    vis = F.interpolate(keeps[0], size=size, mode="nearest")[:, 0]
    if detail_box is not None:
        y1, y2, x1, x2 = detail_box
        inner = F.interpolate(keeps[1], size=(y2 - y1, x2 - x1), mode="nearest")[:, 0]
        vis = vis.clone()
        vis[:, y1:y2, x1:x2] *= inner
    return vis

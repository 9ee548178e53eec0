"""`mim`: masked-image auxiliary tasks, in two variants (`options.variant`).

- `mic` (Masked Image Consistency, MIC): a block mask on the target image (`block` x `block` pixel
  blocks, each masked with probability `mask_ratio`; masked pixels set to 0 in normalised space), applied
  to the host's strongly augmented target view (`color_aug`); the student's prediction on it is
  trained with cross-entropy against the teacher's pseudo-labels of the full clean image, with the
  host's pseudo-label weight. No extra parameters. The prediction is the student's own training pass
  and loss (`seg_loss`), as MIC's `MaskingConsistencyModule` calls the student's `forward_train`: for a
  single-view model `decode(encode(masked))` resized to the label; on HRDA the masked image's context
  view and a random detail crop of it, the fused loss weighted 1 - lambda_d plus the detail crop's loss
  (its label and weight cropped) weighted lambda_d, as MIC on HRDA trains. The mask is drawn on the
  full-resolution image, before HRDA resizes the context view (MIC masks the image it passes in). One
  difference: the detail crop is drawn before the mask (MIC's `forward_train` draws it after; the two
  are independent, so the draws have the same distribution) so that a block of the crop stays visible
  (`block_keep`'s `box`): a wholly masked crop is an all-zero image to the encoder, which made the
  randomly initialised PVTv2's gradients non-finite (as `random_keep` guards the whole image). At the
  paper's sizes (64-pixel blocks, 512 crop: 64 blocks) that happens with probability 0.7^64 < 1e-9; with
  32-pixel crops of 16-pixel blocks (4 to 9 blocks) in 4% to 24% of the passes.
- `recon` (the classic MIM the MFM paper argues against, MAE / MaskFeat style): the same block mask;
  the student's encoder sees the masked target image and a light decoder (the deepest stage resized
  to the block grid, then a 1x1 conv) predicts, per block, either its pixels (`pixel`, normalised per
  block as MAE's norm_pix_loss when `norm_target`) or its HOG descriptor (`hog`: per RGB channel,
  `hog_bins` unsigned orientation bins over `hog_cell`-pixel cells, L2-normalised per block as in
  MaskFeat). Mean-squared error on masked blocks only. On HRDA the encoder features are those of the
  masked image's context view (`view_features`, HRDA's feature_scale 0.5, as the feature distance
  reads), the targets stay the full-resolution blocks: no paper defines MIM on HRDA, this is the
  single-view task on the view that covers the whole image.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from methods import register_aux
from methods._common import (
    block_keep,
    crop,
    require_pseudo_labels,
    target_view,
    weighted_ce,
)
from methods.base import AuxTask, StepContext


def hog_cells(images: torch.Tensor, bins: int = 9, cell: int = 8) -> torch.Tensor:
    """Per-channel histograms of oriented gradients: `B x C x H x W` -> `B x (C*bins) x H/cell x W/cell`.

    Central-difference gradients per channel; each pixel votes its gradient magnitude into one of
    `bins` unsigned orientation bins (0..pi); votes are summed over `cell` x `cell` cells.
    """
    b, c, h, w = images.shape
    x = images.reshape(b * c, 1, h, w)
    kx = images.new_tensor([[[[-1.0, 0.0, 1.0]]]])
    gx = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="replicate"), kx)
    gy = F.conv2d(F.pad(x, (0, 0, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = torch.sqrt(gx * gx + gy * gy)
    ori = torch.remainder(torch.atan2(gy, gx), math.pi)
    idx = (ori / math.pi * bins).long().clamp_(0, bins - 1)
    votes = torch.zeros(b * c, bins, h, w, device=images.device, dtype=images.dtype)
    votes.scatter_(1, idx, mag)
    hist = F.avg_pool2d(votes, cell) * (cell * cell)
    return hist.reshape(b, c * bins, h // cell, w // cell)


@register_aux("mim")
class MaskedImage(AuxTask):
    """Masked-image modelling: MIC consistency (`mic`) or masked-patch reconstruction (`recon`)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        variant: Literal["mic", "recon"] = "mic"
        block: int = Field(32, ge=1)              # mask block side in input pixels (= recon patch)
        mask_ratio: float = Field(0.7, ge=0, lt=1)
        color_aug: bool = True                    # host's strong augmentation before masking
        target: Literal["pixel", "hog"] = "pixel"  # recon only
        norm_target: bool = True                  # recon/pixel: per-block mean/std normalisation
        hog_bins: int = Field(9, ge=2)
        hog_cell: int = Field(8, ge=1)
        decoder_dim: int = Field(0, ge=0)         # recon: hidden 1x1-conv width; 0 = a single 1x1 conv

        @model_validator(mode="after")
        def _check(self) -> MaskedImage.Options:
            if self.variant == "recon" and self.target == "hog" and self.block % self.hog_cell:
                raise ValueError(f"block {self.block} must be a multiple of hog_cell {self.hog_cell}")
            return self

    def __init__(self, options: dict[str, Any], model: nn.Module, num_classes: int) -> None:
        super().__init__(options, model, num_classes)
        o = self.opts
        if o.variant == "recon":
            if o.target == "pixel":
                out = 3 * o.block * o.block
            else:
                out = 3 * o.hog_bins * (o.block // o.hog_cell) ** 2
            c = model.feature_channels[-1]
            if o.decoder_dim:
                self.decoder = nn.Sequential(nn.Conv2d(c, o.decoder_dim, 1), nn.GELU(),
                                             nn.Conv2d(o.decoder_dim, out, 1))
            else:
                self.decoder = nn.Conv2d(c, out, 1)

    def mask_image(self, images: torch.Tensor, box: tuple[int, int, int, int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked images, keep `B x 1 x H x W`): masked pixels are 0 in normalised space; with `box`, a
        block of it stays visible (`block_keep`)."""
        keep = block_keep(images, self.opts.block, self.opts.mask_ratio, box)
        return images * keep, keep

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Per-block reconstruction targets `B x D x H/block x W/block` (no gradients)."""
        o = self.opts
        with torch.no_grad():
            if o.target == "pixel":
                t = F.pixel_unshuffle(images, o.block)
                if o.norm_target:
                    t = (t - t.mean(1, keepdim=True)) / (t.var(1, keepdim=True) + 1e-6).sqrt()
            else:
                t = F.pixel_unshuffle(hog_cells(images, o.hog_bins, o.hog_cell), o.block // o.hog_cell)
                t = F.normalize(t, dim=1)
        return t

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        o = self.opts
        if o.variant == "mic":
            label, weight = require_pseudo_labels(ctx, "mim")
            images = target_view(ctx, o.color_aug)
            box = ctx.student.detail_box(*images.shape[-2:])  # HRDA: the detail crop of this pass (None: one view)
            masked, _ = self.mask_image(images, box)
            # the student's training pass and loss on the masked image (MIC calls `forward_train`): on HRDA
            # the context view and the detail crop, the fused and the detail crop's loss
            return {"mic": ctx.student.seg_loss(masked, lambda logits, b: weighted_ce(
                logits, crop(label, b), crop(weight, b)), box)}
        images = target_view(ctx, o.color_aug)  # input and targets come from the same view
        h, w = images.shape[-2:]
        if h % o.block or w % o.block:
            raise ValueError(f"mim recon: the image size {h}x{w} must be a multiple of block {o.block}")
        masked, keep = self.mask_image(images)
        deepest = ctx.student.view_features(masked)[-1]  # HRDA: its context view's
        grid = (h // o.block, w // o.block)
        if deepest.shape[-2] >= grid[0] and deepest.shape[-1] >= grid[1]:
            deepest = F.adaptive_avg_pool2d(deepest, grid)
        else:
            deepest = F.interpolate(deepest, size=grid, mode="bilinear", align_corners=False)
        pred = self.decoder(deepest)
        err = (pred - self.targets(images)).pow(2).mean(1)            # B x gh x gw
        masked_blocks = 1.0 - F.max_pool2d(keep, o.block)[:, 0]        # a block is masked or not
        loss = (err * masked_blocks).sum() / masked_blocks.sum().clamp(min=1.0)
        return {o.target: loss}

"""`contrastive`: SePiCo's prototype contrast (ProtoCL) as an auxiliary task.

A projection head (1x1 conv, BN, ReLU, 1x1 conv; output L2-normalised) maps encoder features to a
`proj_dim` embedding: the deepest stage for one-stage encoders (DeepLab-v2), the concatenation of all
stages resized to the first one's resolution for hierarchical ones (`in_index` picks stages).
Class prototypes are the running mean of EMA-teacher embeddings of source pixels with ground truth
(the teacher's encoder followed by an EMA copy of the head). The loss is cross-entropy of the
similarities `f . mu^T / temperature` against labels down-sampled by area majority (>= 75% purity),
on source pixels with ground truth (`source`) and target pixels with pseudo-labels (`target`; pixels
of weight 0 ignored). The head and the prototypes live in this task object, never in the student.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from harness.labels import IGNORE_INDEX
from methods import register_aux
from methods._common import downscale_label, require_pseudo_labels, target_view
from methods.base import AuxTask, StepContext


class ProjectionHead(nn.Module):
    """Selected stages (resized to the first selected stage and concatenated) -> L2-normalised embedding."""

    def __init__(self, channels: list[int], in_index: list[int], dim: int) -> None:
        super().__init__()
        self.in_index = in_index
        c_in = sum(channels[i] for i in in_index)
        c_mid = max(c_in // len(in_index), 1)
        self.convs = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
            nn.Conv2d(c_mid, dim, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        xs = [feats[i] for i in self.in_index]
        size = xs[0].shape[-2:]
        x = torch.cat([t if t.shape[-2:] == size else
                       F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in xs], 1)
        return F.normalize(self.convs(x), dim=1)


@register_aux("contrastive")
class Contrastive(AuxTask):
    """SePiCo ProtoCL on encoder features; prototypes from EMA-teacher source features."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        proj_dim: int = Field(512, ge=1)
        temperature: float = Field(100.0, gt=0)   # SePiCo's contrast_temp: logits are divided by it
        min_purity: float = Field(0.75, ge=0, le=1)
        in_index: list[int] | None = None         # stages to use; None = all
        ema_alpha: float = Field(0.99, ge=0, le=1)  # EMA of the projection head (teacher side)
        source: bool = True                       # contrast source pixels with ground truth
        target: bool = True                       # contrast target pixels with pseudo-labels
        color_aug: bool = True                    # host's strong augmentation on the target view

    def __init__(self, options: dict[str, Any], model: nn.Module, num_classes: int) -> None:
        super().__init__(options, model, num_classes)
        channels = list(model.feature_channels)
        idx = self.opts.in_index if self.opts.in_index is not None else list(range(len(channels)))
        bad = [i for i in idx if not -len(channels) <= i < len(channels)]
        if bad or not idx:
            raise ValueError(f"contrastive: in_index {idx} is not a non-empty list of stage indices of an "
                             f"encoder with {len(channels)} stage(s)")
        idx = [i % len(channels) for i in idx]
        if not (self.opts.source or self.opts.target):
            raise ValueError("contrastive: options source and target are both false; enable at least one")
        self.head = ProjectionHead(channels, idx, self.opts.proj_dim)
        self.head_ema = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("proto_mean", torch.zeros(num_classes, self.opts.proj_dim))
        self.register_buffer("proto_count", torch.zeros(num_classes))

    # ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_prototypes(self, emb: torch.Tensor, label: torch.Tensor) -> None:
        """Count-weighted running mean per class of embeddings `B x D x h x w` with labels `B x h x w`."""
        f = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).float()
        y = label.reshape(-1)
        valid = y != IGNORE_INDEX
        f, y = f[valid], y[valid]
        if y.numel() == 0:
            return
        counts = torch.bincount(y, minlength=self.num_classes).to(self.proto_count)
        sums = torch.zeros_like(self.proto_mean).index_add_(0, y, f)
        total = self.proto_count + counts
        seen = counts > 0
        self.proto_mean[seen] = ((self.proto_mean[seen] * self.proto_count[seen, None] + sums[seen])
                                 / total[seen, None])
        self.proto_count.copy_(total)

    def proto_loss(self, emb: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """ProtoCL: CE(f . mu^T / temperature, y) over the valid pixels (0 with a graph when none)."""
        f = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
        y = label.reshape(-1)
        valid = y != IGNORE_INDEX
        if not bool(valid.any()):
            return emb.sum() * 0.0
        logits = f[valid] @ self.proto_mean.to(f.dtype).t() / self.opts.temperature
        return F.cross_entropy(logits, y[valid])

    def _labels(self, label: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return downscale_label(label, tuple(emb.shape[-2:]), self.num_classes, self.opts.min_purity)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        # 1. prototypes from the EMA teacher's view of the labelled source batch (no gradients)
        if ctx.teacher is None:
            raise RuntimeError(f"auxiliary task 'contrastive' needs the host's EMA teacher (ctx.teacher) "
                               f"at iteration {ctx.iteration}; use a self-training host such as 'dacs'")
        with torch.no_grad():
            self.head_ema.train(False)
            emb_t = self.head_ema(list(ctx.teacher.encode(ctx.source_image)))
            self.update_prototypes(emb_t, self._labels(ctx.source_label, emb_t))
        losses: dict[str, torch.Tensor] = {}
        # 2. student embeddings, contrasted against the (detached) prototypes
        if self.opts.source:
            emb = self.head(list(ctx.student.encode(ctx.source_image)))
            losses["source"] = self.proto_loss(emb, self._labels(ctx.source_label, emb))
        if self.opts.target:
            label, weight = require_pseudo_labels(ctx, "contrastive")
            label = label.masked_fill(weight <= 0, IGNORE_INDEX)
            emb = self.head(list(ctx.student.encode(target_view(ctx, self.opts.color_aug))))
            losses["target"] = self.proto_loss(emb, self._labels(label, emb))
        return losses

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        """EMA update of the teacher-side projection head (alpha_t = min(1 - 1/(t+1), alpha))."""
        alpha = min(1 - 1 / (ctx.iteration + 1), self.opts.ema_alpha)
        for e, p in zip(self.head_ema.parameters(), self.head.parameters()):
            e.mul_(alpha).add_(p.detach(), alpha=1 - alpha)
        for e, b in zip(self.head_ema.buffers(), self.head.buffers()):
            e.copy_(b)

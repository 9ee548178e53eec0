"""source_only: supervised cross-entropy on labelled source images; the lower bound of every table."""

from __future__ import annotations

import torch.nn.functional as F

from harness.labels import IGNORE_INDEX
from methods import register_host
from methods._common import crop
from methods.base import Backward, HostMethod, StepContext


@register_host("source_only")
class SourceOnly(HostMethod):
    provides_pseudo_labels = False

    def step(self, ctx: StepContext, backward: Backward) -> None:
        backward("sup", self.model.seg_loss(ctx.source_image, lambda logits, box: F.cross_entropy(
            logits, crop(ctx.source_label, box), ignore_index=IGNORE_INDEX)))

"""oracle: supervised cross-entropy on labelled *target* images; the upper bound of every table.

The only method allowed to read target labels during training.
"""

from __future__ import annotations

import torch.nn.functional as F

from harness.labels import IGNORE_INDEX
from methods import register_host
from methods._common import crop
from methods.base import Backward, HostMethod, StepContext


@register_host("oracle")
class Oracle(HostMethod):
    provides_pseudo_labels = False

    def step(self, ctx: StepContext, backward: Backward) -> None:
        if ctx.target_label is None:
            raise ValueError("oracle needs target labels, but the target dataset provides none")
        backward("sup", self.model.seg_loss(ctx.target_image, lambda logits, box: F.cross_entropy(
            logits, crop(ctx.target_label, box), ignore_index=IGNORE_INDEX)))

"""`contrastive`: SePiCo's prototype contrast (ProtoCL) as an auxiliary task.

Per step (BIT-DA/SePiCo `mmseg/models/uda/sepico.py` `forward_train`; ProtoCL is `experiments.py` id 6):
1. prototypes, from iteration 0: the EMA teacher's encoder and the teacher-side copy of the projection
   head embed the clean source batch; each class prototype mu_c is the count-weighted running mean of
   the embeddings of its pixels (`mmseg/models/utils/proto_estimator.py` `update_proto`), with labels
   area-downscaled to the embedding grid (a cell keeps its majority class when it covers `min_purity`
   of the cell, else it is ignored: `mmseg/models/losses/contrastive_loss.py` `downscale_label_ratio`);
2. from iteration `loss_start` on, the student's encoder and the projection head embed
   - the source view (`source`): the clean source batch, or with `source_aug` the host's strong
     augmentation of it, labelled by the ground truth;
   - the target view (`target`): the host's strong augmentation of the target batch (`color_aug`),
     labelled by the teacher's pseudo-labels, pixels of pseudo-weight 0 ignored;
   and each view's loss is ProtoCL, the cross-entropy of the similarities f . mu^T / `temperature`
   against the labels, over the labelled pixels (`contrastive_loss.py` `proto_contrastive`), plus
   `reg_weight` x the prototype regulariser (`proto_reg`, below);
3. after the optimiser step, the teacher-side head <- EMA of the head (`ema_alpha`, `ema_bn`).

The projection head maps the deepest encoder stage (one-stage encoders such as DeepLab-v2's) or the
concatenation of all stages resized to the first one's resolution (hierarchical ones; `in_index` picks
stages) to a `proj_dim` embedding, L2-normalised. `head: sepico` is SePiCo's `ProjHead(num_convs=2)`
(`mmseg/models/decode_heads/proj_head.py`): two mmcv `ConvModule`s, each 1x1 conv (no bias), BN, ReLU,
so the embeddings are non-negative; `head: udabench` ends in a plain 1x1 conv instead. The middle width is
the input width over the number of stages, as in `ProjHead`. The head and the prototypes live in this task
object, never in the student.

The regulariser (`contrastive_loss.py` `proto_reg`, added inside `proto_contrastive` with weight
`reg_relative_weight` when `use_reg`): with m the mean embedding of the view's labelled pixels and C the
number of classes, reg = sum_c log softmax(m . mu^T / temperature)_c / (C log C). It is at most -1,
equal to -1 when m is equally similar to every prototype; minimising it moves m's class distribution away
from uniform. Embeddings and prototypes have norm <= 1, so at temperature 100 the similarities lie within
+-0.01 and the term stays within 1e-4 of -1 (random unit vectors, 19 classes: tests/test_contrastive_recipe.py);
the logged view losses include it.

Which encoder passes are reused (`reuses`, methods/base.py): SePiCo contrasts the images its
segmentation loss already encodes (its source CE and ProtoCL share one pass of the strongly augmented
source). The `dacs` host's source CE sees the clean source, so with `source_aug: false` the source view
is that pass (`ctx.extras["source_features"]`, with its graph: the gradients a fresh `encode` would
give) and this task asks for it; with `source_aug: true` (SePiCo) the view differs from what the host
encoded, so the task encodes it itself. The target view is SePiCo's strongly augmented, un-mixed target,
which no host pass encodes: the task encodes it. SePiCo does not contrast the ClassMix image, so the
host's mixed pass is not used. Without the host's features (another host, or an older one) the task
encodes the clean source itself, with the same result.

Options and the official value of each (SePiCo's files; `harness/scales.py` `AUX_RECIPE` sets them at
`paper` scale, tests/test_recipe.py checks them):
| option | default (small scales) | SePiCo ProtoCL (`paper`) | official file |
| `loss_start` | 0 | 3000 | `experiments.py` `start_distribution_iter = 3000`; `sepico.py` |
| `head` | udabench | sepico | `experiments.py` `num_convs = 2`; `proj_head.py` |
| `ema_alpha` | 0.99 | 0.999 | `configs/_base_/uda/sepico.py` `alpha=0.999` (the whole EMA model, head included) |
| `ema_bn` | running | batch | `sepico.py` (EMA model in train mode: BN on batch statistics; `_update_ema` of parameters) |
| `reg_weight` | 0 | 1.0 | `experiments.py` id 6 `use_reg = True`, `reg_relative_weight = 1.0` |
| `source_aug` | false | true | `configs/_base_/uda/sepico.py` `enable_strong_aug=True`; `sepico.py` |
| `proj_dim` | 512 | 512 | `experiments.py` `channels = 512` |
| `temperature` | 100 | 100 | `experiments.py` `contrastive_temperature = 100.` |
| `min_purity` | 0.75 | 0.75 | `experiments.py` `scale_min_ratio = 0.75` |
The small scales keep the behaviour the committed `cpu` results were made with: a 2,000-iteration `cpu`
run would never reach iteration 3000, and EMA 0.999 averages over ~1000 iterations of a short schedule
from random initialisation (the reason the hosts use 0.99 there, harness/scales.py).
`method.aux.contrastive.start_iter` (the engine's) delays the whole task, prototypes included; SePiCo's
start is `loss_start`.

On HRDA (harness/models/hrda.py), every view above is the image's context view (`view_features`: the
whole image at HRDA's context scale 0.5, the features HRDA's feature distance reads, `feature_scale`
0.5), for the teacher's prototypes and the student's embeddings alike, and the `dacs` host's reused
source pass is its context view. Why that view: SePiCo contrasts the pixels of whole images against
class prototypes, and the context view is the one view that covers the whole image (labels area-
downscale onto it as onto a single-view model's features); the detail crop is a random half-size window
at inference replaced by sliding windows, and no official code (SePiCo is DAFormer-based) defines
contrast on it. The segmentation losses stay HRDA's own (the host's); the task adds no encoder pass of
the detail view.

Not reproduced: SePiCo draws one colour-jitter/blur decision per batch, shared by source and target (the
host's augmentation draws per image); its own host trains the source CE on the augmented source (the
`dacs` host: the clean one); its ProtoCL run's 640-pixel crops with pseudo-label regeneration
(`pseudo_random_crop`, `regen_pseudo`; ../shared/reference/paper-scale.md P0-3); the EMA warm-up is
applied after step t, SePiCo's at the start of step t + 1 (as for the host's teacher, README).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from harness.labels import IGNORE_INDEX
from methods import register_aux
from methods._common import downscale_label, require_pseudo_labels, target_view
from methods.base import AuxTask, StepContext


class ProjectionHead(nn.Module):
    """Selected stages (resized to the first selected stage and concatenated) -> L2-normalised embedding.

    `kind="udabench"`: conv-BN-ReLU-conv. `kind="sepico"`: (conv-BN-ReLU) x 2, SePiCo's ProjHead(num_convs=2),
    convolutions initialised as mmcv's ConvModule does (Kaiming normal, fan-out, ReLU)."""

    def __init__(self, channels: list[int], in_index: list[int], dim: int, kind: str = "udabench") -> None:
        super().__init__()
        self.in_index = in_index
        c_in = sum(channels[i] for i in in_index)
        c_mid = max(c_in // len(in_index), 1)
        if kind == "sepico":
            self.convs = nn.Sequential(
                nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
                nn.Conv2d(c_mid, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
            for m in self.convs:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        else:
            self.convs = nn.Sequential(
                nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
                nn.Conv2d(c_mid, dim, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        xs = [feats[i] for i in self.in_index]
        size = xs[0].shape[-2:]
        x = torch.cat([t if t.shape[-2:] == size else
                       F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in xs], 1)
        return F.normalize(self.convs(x), dim=1)


def proto_reg(feat: torch.Tensor, protos: torch.Tensor, temperature: float) -> torch.Tensor:
    """SePiCo's prototype regulariser on `feat` (N x D, the view's labelled pixels) and `protos` (C x D):
    sum_c log softmax(mean(feat) . protos^T / temperature)_c / (C log C)."""
    c = protos.shape[0]
    sim = feat.mean(0, keepdim=True) @ protos.t() / temperature
    return torch.log_softmax(sim.float(), dim=1).sum() / (c * math.log(c))


@register_aux("contrastive")
class Contrastive(AuxTask):
    """SePiCo ProtoCL on encoder features; prototypes from EMA-teacher source features."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        proj_dim: int = Field(512, ge=1)
        temperature: float = Field(100.0, gt=0)   # SePiCo's contrast_temp: logits are divided by it
        min_purity: float = Field(0.75, ge=0, le=1)
        in_index: list[int] | None = None         # stages to use; None = all
        head: Literal["udabench", "sepico"] = "udabench"  # sepico: (conv-BN-ReLU) x 2
        ema_alpha: float = Field(0.99, ge=0, le=1)  # EMA of the projection head (teacher side)
        ema_bn: Literal["running", "batch"] = "running"  # teacher-side head BN: copied buffers | batch stats
        reg_weight: float = Field(0.0, ge=0)      # prototype regulariser, relative to the ProtoCL loss
        loss_start: int = Field(0, ge=0)          # first iteration with a loss; prototypes from 0
        source: bool = True                       # contrast source pixels with ground truth
        target: bool = True                       # contrast target pixels with pseudo-labels
        source_aug: bool = False                  # host's strong augmentation on the source view
        color_aug: bool = True                    # host's strong augmentation on the target view

        @field_validator("target")
        @classmethod
        def _one_view(cls, target: bool, info: ValidationInfo) -> bool:
            if not target and info.data.get("source") is False:
                raise ValueError("source and target are both false; enable at least one")
            return target

    def __init__(self, options: dict[str, Any], model: nn.Module, num_classes: int) -> None:
        super().__init__(options, model, num_classes)
        channels = list(model.feature_channels)
        idx = self.opts.in_index if self.opts.in_index is not None else list(range(len(channels)))
        bad = [i for i in idx if not -len(channels) <= i < len(channels)]
        if bad or not idx:
            raise ValueError(f"contrastive: in_index {idx} is not a non-empty list of stage indices of an "
                             f"encoder with {len(channels)} stage(s)")
        idx = [i % len(channels) for i in idx]
        self.head = ProjectionHead(channels, idx, self.opts.proj_dim, self.opts.head)
        self.head_ema = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("proto_mean", torch.zeros(num_classes, self.opts.proj_dim))
        self.register_buffer("proto_count", torch.zeros(num_classes))
        self._next_iteration = 0  # the step the engine reads `reuses` for next; advanced after each step
        self._reuses: frozenset[str] | None = None  # set from outside (e.g. a benchmark clearing it)

    @property
    def reuses(self) -> frozenset[str]:
        """The host's source pass, on the steps whose source view is the clean source (read by the
        engine before each step; after a resume the first step encodes the source itself)."""
        if self._reuses is not None:
            return self._reuses
        clean = self.opts.source and not self.opts.source_aug
        return frozenset({"source_features"} if clean and self._next_iteration >= self.opts.loss_start else ())

    @reuses.setter
    def reuses(self, value: frozenset[str]) -> None:
        self._reuses = frozenset(value)

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
        """ProtoCL, CE(f . mu^T / temperature, y), plus `reg_weight` x proto_reg, over the labelled pixels
        (0 with a graph when none)."""
        f = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
        y = label.reshape(-1)
        valid = y != IGNORE_INDEX
        if not bool(valid.any()):
            return emb.sum() * 0.0
        f, mu = f[valid], self.proto_mean.to(f.dtype)
        loss = F.cross_entropy(f @ mu.t() / self.opts.temperature, y[valid])
        if self.opts.reg_weight > 0:
            loss = loss + self.opts.reg_weight * proto_reg(f, mu, self.opts.temperature)
        return loss

    def _labels(self, label: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return downscale_label(label, tuple(emb.shape[-2:]), self.num_classes, self.opts.min_purity)

    def source_features(self, ctx: StepContext) -> list[torch.Tensor]:
        """The student's encoder stages of the source view: the host's pass of the clean source when it
        left one (`ctx.extras["source_features"]`), else a pass of the task's own."""
        if self.opts.source_aug and ctx.augment is not None:
            return list(ctx.student.view_features(ctx.augment(ctx.source_image)))
        reused = ctx.extras.get("source_features")
        return list(reused) if reused is not None else list(ctx.student.view_features(ctx.source_image))

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        # 1. prototypes from the EMA teacher's view of the labelled clean source batch, every iteration
        if ctx.teacher is None:
            raise RuntimeError(f"auxiliary task 'contrastive' needs the host's EMA teacher (ctx.teacher) "
                               f"at iteration {ctx.iteration}; use a self-training host such as 'dacs'")
        with torch.no_grad():
            self.head_ema.train(self.opts.ema_bn == "batch")
            emb_t = self.head_ema(list(ctx.teacher.view_features(ctx.source_image)))
            self.update_prototypes(emb_t, self._labels(ctx.source_label, emb_t))
        if ctx.iteration < self.opts.loss_start:
            return {}
        losses: dict[str, torch.Tensor] = {}
        # 2. student embeddings of each view, contrasted against the (detached) prototypes
        if self.opts.source:
            emb = self.head(self.source_features(ctx))
            losses["source"] = self.proto_loss(emb, self._labels(ctx.source_label, emb))
        if self.opts.target:
            label, weight = require_pseudo_labels(ctx, "contrastive")
            label = label.masked_fill(weight <= 0, IGNORE_INDEX)
            emb = self.head(list(ctx.student.view_features(target_view(ctx, self.opts.color_aug))))
            losses["target"] = self.proto_loss(emb, self._labels(label, emb))
        return losses

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        """3. EMA of the teacher-side head, alpha_t = min(1 - 1/(t+1), alpha): its parameters, and with
        `ema_bn: running` its BN buffers copied from the head (with `batch` its BN uses batch statistics)."""
        self._next_iteration = ctx.iteration + 1
        alpha = min(1 - 1 / (ctx.iteration + 1), self.opts.ema_alpha)
        for e, p in zip(self.head_ema.parameters(), self.head.parameters()):
            e.mul_(alpha).add_(p.detach(), alpha=1 - alpha)
        if self.opts.ema_bn == "running":
            for e, b in zip(self.head_ema.buffers(), self.head.buffers()):
                e.copy_(b)

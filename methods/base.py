"""The two interfaces every method implements.

- A **host** (`source_only`, `dacs`, `oracle`) owns the step's main losses and, for self-training
  hosts, the EMA teacher and its pseudo-labels.
- An **auxiliary task** (`contrastive`, `mim`, `mfm`) adds L_aux on top. It sees a `StepContext`
  (batches, student, teacher, the host's pseudo-labels and weights) and returns named, unweighted
  losses; the engine multiplies by the task's lambda (`method.aux.<name>.weight`) and back-propagates.
  It owns its extra trainable parts as submodules; they are trained and checkpointed but never part
  of the evaluated or exported model.

What a self-training host leaves in `ctx.extras` after its step (the `dacs` host; tasks read them instead
of recomputing):
- always: `"mixed_image"` (the mixed target image the student saw, after the strong augmentation),
  `"mixed_label"` (B x H x W) and `"mixed_weight"` (B x H x W, the pixel weights of its loss);
- only when a task running this step declares it in `AuxTask.reuses` (the engine puts the union into
  `ctx.reuse`): `"mixed_features"` / `"source_features"`, the student's encoder stage outputs (shallow to
  deep) of the mixed image / of the source image from the source CE pass, WITH their autograd graph:
  `"mixed_features"` is what the segmentor's `encode_views` returned for the pass (harness/models/base.py;
  on HRDA, two views a pass, a `harness.models.hrda.Views`: context view, detail crop, its box) and
  `"source_features"` the pass's stages that `view_features` gives (`Segmentor.view_stages`; on HRDA the
  context view's: the view the one-view tasks read). The host back-propagates its own loss on them with
  `retain_graph=True`; a task's loss through them gives the gradients a fresh `encode_views` of the same
  image (with the same detail crop) would give, without a second encoder pass. The engine
  back-propagates the task losses keeping the graph (two tasks may share it) and drops these entries
  after the last task, so no graph outlives the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from harness.models.base import Segmentor

# backward(name, loss, retain_graph=False): checks the loss is finite (else raises naming it and the
# iteration), scales it for AMP, back-propagates (keeping the graph when asked: a later loss shares it, as
# the dacs host's feature distance shares the source CE's encoder pass), and records its value for logging.
Backward = Callable[..., None]


@dataclass
class StepContext:
    """Everything one training step knows; images are normalised float tensors on the device."""

    iteration: int
    source_image: torch.Tensor           # B x 3 x H x W
    source_label: torch.Tensor           # B x H x W, long, 255 = ignore
    target_image: torch.Tensor           # B x 3 x H x W (clean, un-augmented)
    student: Segmentor                   # the segmentor being trained (its passes: harness/models/base.py)
    teacher: Segmentor | None = None     # EMA teacher, eval mode (BN in train mode with method.teacher_bn
                                         # 'batch'), never receives gradients
    pseudo_label: torch.Tensor | None = None   # B x H x W, long, teacher argmax on the clean target
    pseudo_weight: torch.Tensor | None = None  # B x H x W, float confidence weight
    pseudo_valid: torch.Tensor | None = None   # B x H x W, bool: target pixels outside the image's
                                         # pseudo-label margins (method.pseudo_image_margins); None = off
    target_label: torch.Tensor | None = None   # only the oracle host may read this
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # host's strong colour/blur aug
    mean: torch.Tensor | None = None     # 1x3x1x1 normalisation, 0-255 units
    std: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # host -> tasks; see the module docstring
    stats: dict[str, float] = field(default_factory=dict)  # logged as `stat/<name>` (mean per eval)
    reuse: frozenset[str] = frozenset()  # encoder passes the tasks of this step reuse (REUSABLE names)


class HostMethod(nn.Module):
    """A host method. Submodules registered here (e.g. the teacher) are checkpointed."""

    provides_pseudo_labels: ClassVar[bool] = False

    def __init__(self, cfg, model: nn.Module) -> None:  # cfg: harness.config.MethodConfig
        super().__init__()
        self.cfg = cfg
        self.student = [model]  # a list, so the student is not registered twice in state dicts

    @property
    def model(self) -> nn.Module:
        return self.student[0]

    def step(self, ctx: StepContext, backward: Backward) -> None:
        """Compute the host's losses, call `backward` once per loss (recipe order), and fill
        `ctx.pseudo_label` / `ctx.pseudo_weight` / `ctx.teacher` (and a self-training host `ctx.extras`,
        module docstring) for the auxiliary tasks."""
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """E.g. the EMA teacher update."""


# the host's encoder passes a task may reuse (see the module docstring)
REUSABLE = frozenset({"mixed_features", "source_features"})


class AuxTask(nn.Module):
    """An auxiliary task. Subclasses set `Options` (a pydantic model of their knobs).

    `reuses`: which of the host's encoder passes (`REUSABLE`) the task reads from `ctx.extras`; a task
    whose needs depend on its options sets `self.reuses` in `__init__` (the engine reads the instance).
    """

    needs_pseudo_labels: ClassVar[bool] = True
    reuses: ClassVar[frozenset[str]] = frozenset()

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: dict[str, Any], model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.opts = self.Options.model_validate(options)
        self.num_classes = num_classes

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Return named, unweighted losses (scalar tensors)."""
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """E.g. update running class prototypes."""

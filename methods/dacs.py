"""dacs: self-training with an EMA teacher and ClassMix (DACS; the DAFormer/MIC host recipe).

Per step (reference recipe, ../shared/reference/methods.md section 2):
1. supervised CE on the source batch (back-propagated first);
2. the EMA teacher labels the clean target batch: pseudo-label = argmax, weight = the fraction of
   pixels whose confidence reaches `pseudo_threshold` (one scalar per batch, on every pixel);
3. ClassMix: half of the classes present in each source label are pasted onto the target image;
4. strong augmentation of the mixed image (colour jitter p=0.8, Gaussian blur p=0.5);
5. CE of the student on the mixed image against the mixed label, source pixels weighted 1;
after the optimiser step, teacher <- alpha_t * teacher + (1 - alpha_t) * student,
alpha_t = min(1 - 1/(t+1), alpha).

The DAFormer/MIC recipe adds, each an option of `method` that is off at the small scales and set at
paper scale (harness/scales.py, README "Paper-scale recipe"):
- `fd`: ImageNet feature distance (DAFormer `calc_feat_dist`): the L2 distance between the student's
  last encoder stage and a frozen, eval-mode copy of the initial encoder, on source images, averaged over
  the cells of `fd.classes` in the area-downscaled label, back-propagated right after the source CE (on
  HRDA the context view's deepest stage of the same source pass, against the frozen copy's of the same
  view: the official HRDA's `feature_scale` 0.5 in `calc_feat_dist`);
- `pseudo_weight_ignore_top` / `_bottom`: the pseudo-weight of those rows of each target crop set to 0
  (DAFormer); `pseudo_image_margins`: of the pixels in those margins of the target image, cut with the crop
  (HRDA's `crop_pseudo_margins`: the data loader's `ctx.pseudo_valid` multiplies the weight);
- `teacher_bn: batch`: the teacher's BatchNorm uses the target batch's statistics (dropout and drop-path
  off: every module but BatchNorm in eval mode), and the EMA averages parameters only;
- `source_ce_mean: all`: the source CE averaged over all pixels, ignored ones counting 0 (mmseg);
- `classmix_classes: batch`: ClassMix picks half of the classes of the whole source batch, ignore
  included (DAFormer `get_class_masks`), for each image.

For the auxiliary tasks the step leaves in `ctx.extras` the augmented mixed image with its label and
pixel weight, and, when a task of the step asks for them (`ctx.reuse`), the student's encoder features of
the mixed and of the source image with their graph, its own loss back-propagated with `retain_graph`
(the contract is in methods/base.py).

The passes are the segmentor interface's (harness/models/base.py), the same code for every architecture:
each student pass is a training pass split in two, `encode_views` (kept for the tasks) then `views_loss`
with the label and weight cropped to what each logit map covers (`_common.crop`); the teacher's
pseudo-labels come from `predict`; FD reads the pass's `view_features` stages (`view_stages`) and
the frozen copy's `view_features`. On a single-view model the training pass is `decode(encode(x))` then
the bilinear resize, exactly `model(x)`, so the host's losses are the same to the bit with or without
reuse. On HRDA (harness/models/hrda.py) it is the context view and a random detail crop, the fused loss
and the detail crop's; `predict` is HRDA's inference path (context view + sliding detail windows, fused),
as the official `generate_pseudo_label` -> `encode_decode`, whatever the teacher's modules' training flags.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from harness.labels import IGNORE_INDEX
from methods import register_host
from methods._common import crop, downscale_label
from methods.base import Backward, HostMethod, StepContext


def strong_augment(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, jitter: float = 0.2,
                   jitter_p: float = 0.8, blur_p: float = 0.5) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation, hue) and Gaussian blur, per image, on normalised
    images (de-normalised to [0, 1] and back). Uses the global torch RNG, so runs are reproducible."""
    x = (images * std + mean) / 255.0
    out = []
    for img in x:
        if jitter > 0 and torch.rand(()) < jitter_p:
            b, c, s = (float(torch.empty(()).uniform_(1 - jitter, 1 + jitter)) for _ in range(3))
            h = float(torch.empty(()).uniform_(-jitter, jitter))
            img = TF.adjust_brightness(img, b)
            img = TF.adjust_contrast(img, c)
            img = TF.adjust_saturation(img, s)
            img = TF.adjust_hue(img, min(max(h, -0.5), 0.5))
        if torch.rand(()) < blur_p:
            sigma = float(torch.empty(()).uniform_(0.15, 1.15))
            k = max(3, int(2 * round(3 * sigma) + 1))
            img = TF.gaussian_blur(img, [k, k], [sigma, sigma])
        out.append(img)
    return (torch.stack(out).clamp(0, 1) * 255.0 - mean) / std


def class_mix_masks(source_label: torch.Tensor, classes_of: str = "image") -> torch.Tensor:
    """B x H x W bool: pixels of half (rounded up) of the classes present in each source label
    (`classes_of="image"`, ignore excluded), or of half of the classes present anywhere in the batch,
    ignore included, drawn per image (`"batch"`, DAFormer's get_class_masks)."""
    masks = []
    batch_classes = torch.unique(source_label) if classes_of == "batch" else None
    for lbl in source_label:
        if batch_classes is not None:
            classes = batch_classes
        else:
            classes = torch.unique(lbl)
            classes = classes[classes != IGNORE_INDEX]
        n = (len(classes) + 1) // 2
        chosen = classes[torch.randperm(len(classes), device=classes.device)[:n]]
        masks.append(torch.isin(lbl, chosen))
    return torch.stack(masks)


def set_teacher_mode(teacher: nn.Module, bn: str) -> None:
    """`running`: the whole teacher in eval mode. `batch`: BatchNorm layers in training mode (they
    normalise with the batch's statistics), every other module in eval mode (no dropout, no drop-path)."""
    teacher.eval()
    if bn == "batch":
        for m in teacher.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()


def feature_distance(student: torch.Tensor, frozen: torch.Tensor, label: torch.Tensor,
                     classes: Sequence[int] | None, min_ratio: float, num_classes: int) -> torch.Tensor:
    """DAFormer's masked feature distance: the per-cell L2 norm of `student - frozen` (B x C x h x w),
    averaged over the cells whose area-downscaled `label` (B x H x W; a cell keeps its majority class if
    it covers at least `min_ratio` of its pixels) is one of `classes` (every cell when None). No such cell:
    0, with a zero gradient (DAFormer's mean over no cells is NaN, its gradient also zero)."""
    dist = torch.linalg.vector_norm(student.float() - frozen.float(), dim=1)
    if classes is None:
        return dist.mean()
    cells = downscale_label(label, tuple(student.shape[-2:]), num_classes, min_ratio)
    mask = torch.isin(cells, torch.as_tensor(list(classes), device=cells.device))
    if not bool(mask.any()):
        return dist.sum() * 0.0
    return dist[mask].mean()


def pixel_ce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None, mean_all: bool) -> torch.Tensor:
    """Cross-entropy per pixel (ignore -> 0), times `weight`, averaged over all pixels (`mean_all`, mmseg)
    or over the labelled ones."""
    if weight is None and not mean_all:
        return F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)
    ce = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce if weight is None else ce * weight).mean()


@register_host("dacs")
class DACS(HostMethod):
    provides_pseudo_labels = True

    def __init__(self, cfg, model) -> None:
        super().__init__(cfg, model)
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        set_teacher_mode(self.teacher, cfg.teacher_bn)
        if cfg.fd.weight > 0:  # the initial (pretrained) model, frozen, always in eval mode; FD uses its encode
            self.imnet = copy.deepcopy(model)
            for p in self.imnet.parameters():
                p.requires_grad_(False)
            self.imnet.eval()

    def train(self, mode: bool = True):  # the teacher keeps its own mode (`teacher_bn`), FD's model eval
        super().train(mode)
        set_teacher_mode(self.teacher, self.cfg.teacher_bn)
        if hasattr(self, "imnet"):
            self.imnet.eval()
        return self

    @torch.no_grad()
    def pseudo_label(self, target_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.teacher_bn == "batch":
            set_teacher_mode(self.teacher, "batch")
        probs = torch.softmax(self.teacher.predict(target_image).float(), dim=1)  # HRDA: windows, fused
        confidence, label = probs.max(dim=1)
        ratio = (confidence >= self.cfg.pseudo_threshold).float().mean()
        return label, ratio * torch.ones_like(confidence)

    def crop_pseudo_weight(self, weight: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The pseudo-label crop: rows `pseudo_weight_ignore_top` / `_bottom` of each crop get weight 0; with
        `valid` (B x H x W, the image's margins cut with the crop), its False pixels too."""
        top, bottom = self.cfg.pseudo_weight_ignore_top, self.cfg.pseudo_weight_ignore_bottom
        if top > 0:
            weight[:, :top, :] = 0
        if bottom > 0:
            weight[:, -bottom:, :] = 0
        if valid is not None:
            weight = weight * valid
        return weight

    def source_loss(self, ctx: StepContext, backward: Backward) -> None:
        """The supervised source CE of a training pass (HRDA: the fused and the detail crop's, the label
        cropped), then (with `fd.weight` > 0) the ImageNet feature distance on the pass's `view_features`
        stages (HRDA: its context view, the official `feature_scale` 0.5); those stages go to `ctx.extras`
        when a task reuses them."""
        c = self.cfg
        share = "source_features" in ctx.reuse
        mean_all = c.source_ce_mean == "all"
        features = self.model.encode_views(ctx.source_image)
        loss = self.model.views_loss(features, lambda logits, box: pixel_ce(
            logits, crop(ctx.source_label, box), None, mean_all), ctx.source_image.shape[-2:])
        if c.fd.weight <= 0 and not share:
            backward("sup", loss)
            return
        backward("sup", loss, retain_graph=True)
        stages = self.model.view_stages(features)
        if c.fd.weight > 0:
            with torch.no_grad():
                frozen = self.imnet.view_features(ctx.source_image)[-1]
            dist = feature_distance(stages[-1], frozen, ctx.source_label, c.fd.classes, c.fd.min_ratio,
                                    self.model.num_classes)
            backward("fd", c.fd.weight * dist, retain_graph=share)
        if share:
            ctx.extras["source_features"] = stages

    def augment(self, ctx: StepContext):
        c = self.cfg
        return lambda x: strong_augment(x, ctx.mean, ctx.std, c.color_jitter, c.color_jitter_p, c.blur_p)

    def step(self, ctx: StepContext, backward: Backward) -> None:
        # 1. supervised source loss (and the ImageNet feature distance)
        self.source_loss(ctx, backward)
        # 2. teacher pseudo-labels on the clean target image
        ctx.teacher = self.teacher
        ctx.pseudo_label, ctx.pseudo_weight = self.pseudo_label(ctx.target_image)
        ctx.augment = self.augment(ctx)
        ctx.stats["pseudo_weight"] = float(ctx.pseudo_weight.flatten()[0])  # the confident share
        ctx.pseudo_weight = self.crop_pseudo_weight(ctx.pseudo_weight, ctx.pseudo_valid)
        # 3. ClassMix (source pixels keep their label and weight 1) and 4. strong augmentation
        if self.cfg.mix == "classmix":
            mask = class_mix_masks(ctx.source_label, self.cfg.classmix_classes)
            image = torch.where(mask[:, None], ctx.source_image, ctx.target_image)
            label = torch.where(mask, ctx.source_label, ctx.pseudo_label)
            weight = torch.where(mask, torch.ones_like(ctx.pseudo_weight), ctx.pseudo_weight)
        else:
            image, label, weight = ctx.target_image, ctx.pseudo_label, ctx.pseudo_weight
        image = ctx.augment(image)
        ctx.extras.update(mixed_image=image, mixed_label=label, mixed_weight=weight)
        # 5. student on the mixed image, pixel-weighted CE (its encoder pass kept for a task that reuses it)
        share = "mixed_features" in ctx.reuse
        features = self.model.encode_views(image)
        backward("uda", self.model.views_loss(features, lambda logits, box: pixel_ce(
            logits, crop(label, box), crop(weight, box), True), image.shape[-2:]), retain_graph=share)
        if share:
            ctx.extras["mixed_features"] = features

    @torch.no_grad()
    def after_optimizer_step(self, iteration: int) -> None:
        alpha = min(1.0 - 1.0 / (iteration + 1), self.cfg.ema_alpha)
        # teacher <- alpha * teacher + (1 - alpha) * student, as one fused update over all tensors
        pairs = [(t, s.detach()) for t, s in zip(self.teacher.parameters(), self.model.parameters())]
        if self.cfg.teacher_bn == "batch":  # parameters only (DAFormer _update_ema): the teacher's BN
            torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], 1.0 - alpha)  # uses batch stats
            return
        pairs += [(t, s) for t, s in zip(self.teacher.buffers(), self.model.buffers())
                  if t.dtype.is_floating_point]
        torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], 1.0 - alpha)
        for t, s in zip(self.teacher.buffers(), self.model.buffers()):
            if not t.dtype.is_floating_point:
                t.copy_(s)

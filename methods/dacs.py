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
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from harness.labels import IGNORE_INDEX
from methods import register_host
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


def class_mix_masks(source_label: torch.Tensor) -> torch.Tensor:
    """B x H x W bool: pixels of half (rounded up) of the classes present in each source label."""
    masks = []
    for lbl in source_label:
        classes = torch.unique(lbl)
        classes = classes[classes != IGNORE_INDEX]
        n = (len(classes) + 1) // 2
        chosen = classes[torch.randperm(len(classes), device=classes.device)[:n]]
        masks.append(torch.isin(lbl, chosen))
    return torch.stack(masks)


@register_host("dacs")
class DACS(HostMethod):
    provides_pseudo_labels = True

    def __init__(self, cfg, model) -> None:
        super().__init__(cfg, model)
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True):  # the teacher stays in eval mode (no dropout, frozen BN)
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def pseudo_label(self, target_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.teacher(target_image).float(), dim=1)
        confidence, label = probs.max(dim=1)
        ratio = (confidence >= self.cfg.pseudo_threshold).float().mean()
        return label, ratio * torch.ones_like(confidence)

    def augment(self, ctx: StepContext):
        c = self.cfg
        return lambda x: strong_augment(x, ctx.mean, ctx.std, c.color_jitter, c.color_jitter_p, c.blur_p)

    def step(self, ctx: StepContext, backward: Backward) -> None:
        # 1. supervised source loss
        logits = self.model(ctx.source_image)
        backward("sup", F.cross_entropy(logits, ctx.source_label, ignore_index=IGNORE_INDEX))
        del logits
        # 2. teacher pseudo-labels on the clean target image
        ctx.teacher = self.teacher
        ctx.pseudo_label, ctx.pseudo_weight = self.pseudo_label(ctx.target_image)
        ctx.augment = self.augment(ctx)
        ctx.stats["pseudo_weight"] = float(ctx.pseudo_weight.flatten()[0])
        # 3. ClassMix (source pixels keep their label and weight 1) and 4. strong augmentation
        if self.cfg.mix == "classmix":
            mask = class_mix_masks(ctx.source_label)
            image = torch.where(mask[:, None], ctx.source_image, ctx.target_image)
            label = torch.where(mask, ctx.source_label, ctx.pseudo_label)
            weight = torch.where(mask, torch.ones_like(ctx.pseudo_weight), ctx.pseudo_weight)
        else:
            image, label, weight = ctx.target_image, ctx.pseudo_label, ctx.pseudo_weight
        image = ctx.augment(image)
        # 5. student on the mixed image, pixel-weighted CE
        ce = F.cross_entropy(self.model(image), label, ignore_index=IGNORE_INDEX, reduction="none")
        backward("uda", (ce * weight).mean())

    @torch.no_grad()
    def after_optimizer_step(self, iteration: int) -> None:
        alpha = min(1.0 - 1.0 / (iteration + 1), self.cfg.ema_alpha)
        # teacher <- alpha * teacher + (1 - alpha) * student, as one fused update over all tensors
        pairs = [(t, s.detach()) for t, s in zip(self.teacher.parameters(), self.model.parameters())]
        pairs += [(t, s) for t, s in zip(self.teacher.buffers(), self.model.buffers())
                  if t.dtype.is_floating_point]
        torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], 1.0 - alpha)
        for t, s in zip(self.teacher.buffers(), self.model.buffers()):
            if not t.dtype.is_floating_point:
                t.copy_(s)

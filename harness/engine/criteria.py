"""Label-free model-selection criteria: numbers computed from a model's predictions on target *training*
images (never their labels) at every evaluation, logged beside target mIoU as `criterion/<name>`, so that a
checkpoint can be chosen without the target labels UDA assumes we do not have. Which checkpoint each
criterion would have picked, and how its ranking agrees with target mIoU, is the report's selection table
(harness/report/selection.py). Directions (which value is better) are `harness.config.CRITERIA`.

- `entropy` (lower is better): the mean per-pixel Shannon entropy of the softmax prediction, in nats.
  Target entropy as a validation criterion: Morerio, Cavazza & Murino, "Minimal-Entropy Correlation
  Alignment for Unsupervised Deep Domain Adaptation", ICLR 2018; the `Entropy` validator of Musgrave,
  Belongie & Lim, "Three New Validators and a Large-Scale Benchmark Ranking for Unsupervised Domain
  Adaptation", arXiv:2208.07360 (2022).
- `im` (higher is better): information maximisation, H(mean prediction) - mean H(prediction), in nats:
  confident per pixel and diverse over the pixels. The objective of SHOT: Liang, Hu & Feng, "Do We Really
  Need to Access the Source Data? Source Hypothesis Transfer for Unsupervised Domain Adaptation", ICML
  2020; as a validator (`IM`): Musgrave, Belongie & Lim, "Unsupervised Domain Adaptation: A Reality
  Check", arXiv:2111.15672 (2021), and arXiv:2208.07360.
- `teacher_agreement` (higher is better; hosts with an EMA teacher only): mIoU (%) between the teacher's
  and the student's argmax on the same images. The teacher-student consistency self-training rests on:
  Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017; agreement between two
  models tracking their accuracy: Jiang, Nagarajan, Baek & Kolter, "Assessing Generalization of SGD via
  Disagreement", ICLR 2022.
- `consistency` (higher is better): mIoU (%) between the argmax on an image and on a horizontally flipped,
  colour-jittered view of it (mapped back by flipping): the flip and photometric consistency of
  Araslanov & Roth, "Self-supervised Augmentation Consistency for Adapting Semantic Segmentation", CVPR
  2021, read as an accuracy proxy in the sense of Jiang et al. (ICLR 2022) above.

The pure functions take logits, probabilities or label maps; `compute` runs them for a model on a loader.
Computing them changes nothing in training: the models are run without gradients, the student in eval
mode, the teacher as its host runs it with its buffers restored afterwards, and the jitter draws from its
own generator (seeded by the image's position), not from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from harness.config import CRITERIA
from harness.labels import NUM_CLASSES

PREFIX = "criterion/"


def metric_name(criterion: str) -> str:
    """The MLflow metric of a criterion: `criterion/<name>`."""
    return PREFIX + criterion


# ---------------------------------------------------------------------------------------------------
# pure functions

def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each pixel's class distribution: B x C x H x W -> B x H x W (0 log 0 = 0)."""
    p = probs.float()
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1)


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean per-pixel entropy (nats) of B x C x H x W probabilities; lower is better."""
    return float(pixel_entropy(probs).mean())


def information_maximization(probs: torch.Tensor) -> float:
    """H(p̄) - mean H(p) (nats), p̄ the mean prediction over all pixels of all images; higher is better.
    One pixel class everywhere, certain: 0 - 0 = 0; classes balanced over pixels, each pixel certain:
    log C - 0."""
    p = probs.float()
    marginal = p.mean(dim=(0, 2, 3))
    h_marginal = -(marginal * torch.log(marginal.clamp_min(1e-12))).sum()
    return float(h_marginal - pixel_entropy(p).mean())


def agreement_counts(a: torch.Tensor, b: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """The confusion matrix (num_classes x num_classes, int64) of two label maps of the same shape."""
    idx = a.reshape(-1).long() * num_classes + b.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def agreement_miou(counts: torch.Tensor) -> float:
    """mIoU (%) of two label maps from their confusion matrix (`agreement_counts`): per class, the pixels
    both call c over the pixels either calls c, averaged over the classes either uses. 100 = identical."""
    c = counts.double()
    inter = c.diagonal()
    union = c.sum(0) + c.sum(1) - inter
    used = union > 0
    return float(100 * (inter[used] / union[used]).mean()) if bool(used.any()) else math.nan


def jitter_view(images: torch.Tensor, seeds: Sequence[int], strength: float = 0.2) -> torch.Tensor:
    """A flipped, colour-jittered view of B x 3 x H x W images (0-255 floats): brightness and contrast each
    scaled by a factor in [1 - strength, 1 + strength] drawn from a generator seeded with the image's
    seed (the same view at every evaluation), then flipped left-right."""
    out = []
    for image, seed in zip(images, seeds):
        g = torch.Generator().manual_seed(int(seed))
        brightness, contrast = (1 + strength * (2 * torch.rand(2, generator=g) - 1)).tolist()
        x = image * brightness
        x = (x - x.mean()) * contrast + x.mean()
        out.append(x.clamp(0, 255))
    return torch.stack(out).flip(-1)


# ---------------------------------------------------------------------------------------------------
# over a loader

class _Sums:
    """Running sums over images, so the criteria pool all pixels of the subset."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.entropy = 0.0
        self.pixels = 0
        self.marginal = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.teacher = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.consistency = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)


class _KeptBuffers:
    """Restores a module's buffers on exit (a teacher whose BatchNorm runs on batch statistics updates
    its running statistics when called)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.saved = [b.detach().clone() for b in self.module.buffers()] if self.module is not None else []

    def __exit__(self, *exc) -> None:
        if self.module is not None:
            with torch.no_grad():
                for b, s in zip(self.module.buffers(), self.saved):
                    b.copy_(s)


def compute(model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device | str,
            names: Sequence[str], teacher: nn.Module | None = None, mode: str = "whole", crop: Any = None,
            stride: Any = None, mean: Sequence[float] = (123.675, 116.28, 103.53),
            std: Sequence[float] = (58.395, 57.12, 57.375), num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """The criteria `names` of `model` on the images of `loader` (items {"image": uint8 [B]x3xHxW}; labels,
    if any, are never read), as {`criterion/<name>`: value}. `teacher_agreement` needs `teacher` (left out
    without one). Inference as the evaluation's (`mode`, `crop`, `stride`). The model is put back in its
    previous mode; the teacher's buffers are restored."""
    from harness.engine.evaluation import inference

    device = torch.device(device)
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown selection criterion {unknown[0]!r}; expected one of {', '.join(CRITERIA)}")
    if teacher is None and "teacher_agreement" in names:
        names.remove("teacher_agreement")
    if not names:
        return {}
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    sums = _Sums(num_classes, device)
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _KeptBuffers(teacher if "teacher_agreement" in names else None):
            for batch in loader:
                images = batch["image"]
                if images.dim() == 3:
                    images = images.unsqueeze(0)
                images = images.to(device).float()
                logits = inference(model, (images - mean_t) / std_t, mode, crop, stride).float()
                probs = torch.softmax(logits, dim=1)
                pred = logits.argmax(1)
                sums.entropy += float(pixel_entropy(probs).sum())
                sums.marginal += probs.sum(dim=(0, 2, 3)).double()
                sums.pixels += pred.numel()
                if "teacher_agreement" in names:
                    t_pred = inference(teacher, (images - mean_t) / std_t, mode, crop, stride).argmax(1)
                    sums.teacher += agreement_counts(t_pred, pred, num_classes)
                if "consistency" in names:
                    view = jitter_view(images.cpu(), range(seen, seen + len(images))).to(device)
                    v_pred = inference(model, (view - mean_t) / std_t, mode, crop, stride).flip(-1).argmax(1)
                    sums.consistency += agreement_counts(v_pred, pred, num_classes)
                seen += len(images)
    finally:
        model.train(was_training)
    if not sums.pixels:
        return {}
    values = {}
    h_mean = sums.entropy / sums.pixels
    marginal = sums.marginal / sums.pixels
    h_marginal = float(-(marginal * torch.log(marginal.clamp_min(1e-12))).sum())
    for name in names:
        if name == "entropy":
            values[name] = h_mean
        elif name == "im":
            values[name] = h_marginal - h_mean
        elif name == "teacher_agreement":
            values[name] = agreement_miou(sums.teacher)
        elif name == "consistency":
            values[name] = agreement_miou(sums.consistency)
    return {metric_name(k): v for k, v in values.items()}

"""The evaluation protocol: confusion matrix, mIoU (19 / SYNTHIA 16 / 13 classes), whole and sliding-window
inference.

Definitions (identical to the official Cityscapes evaluation and mmseg):

- One confusion matrix is accumulated over the whole validation set (rows = ground truth, columns =
  prediction); pixels whose ground truth is 255 (ignore) are skipped.
- IoU_c = TP_c / (TP_c + FP_c + FN_c).
- A class absent from both the ground truth and the predictions of the whole set (TP + FP + FN = 0) has
  IoU NaN and is excluded from every mean: it counts neither as 0 nor as 1. A class predicted but never
  in the ground truth has IoU 0 (all its pixels are false positives) and does count.
- mIoU = mean of the non-NaN IoUs over the 19 classes; mIoU16 / mIoU13 the same over
  `harness.labels.SYNTHIA16` / `SYNTHIA13`; pixel accuracy = sum(TP) / number of non-ignored pixels.
- All values are fractions in [0, 1] (the training engine reports them x100).

Batches: `val_loader` stacks consecutive images of the same size (a batch of mixed sizes becomes a list
of same-size batches), so more than one image per forward pass works with any dataset and with
sliding-window inference. On CUDA the training engine evaluates 4 images per forward in the training's
autocast dtype (`harness.engine.runtime`); on the CPU one image per forward in fp32, as before.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.labels import IGNORE_INDEX, NUM_CLASSES, SYNTHIA13, SYNTHIA16

MEAN = (123.675, 116.28, 103.53)  # ImageNet, 0-255 units (ARCHITECTURE.md)
STD = (58.395, 57.12, 57.375)


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


class ConfusionMatrix:
    """A num_classes x num_classes int64 matrix (rows: ground truth, columns: prediction) kept on the
    device of the first update (one `bincount` per update, no host transfer)."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: torch.Tensor | None = None
        if device is not None:
            self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        if self.matrix is not None:
            self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. `pred`: class indices with the shape of `target`, or logits with one more
        (class) dimension at dim 1. `target`: trainIds, `ignore_index` pixels are skipped."""
        n = self.num_classes
        if pred.is_floating_point() and pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        if self.matrix is None:
            self.matrix = torch.zeros(n, n, dtype=torch.int64, device=target.device)
        target = target.to(self.matrix.device, torch.int64)
        pred = pred.to(self.matrix.device, torch.int64)
        valid = target != self.ignore_index
        t, p = target[valid], pred[valid]
        if t.numel():
            bad = (t < 0) | (t >= n) | (p < 0) | (p >= n)
            if bool(bad.any()):
                tb, pb = t[bad][0].item(), p[bad][0].item()
                raise ValueError(f"label {tb} / prediction {pb} out of range: expected class ids 0..{n - 1} "
                                 f"(labels may also be {self.ignore_index} = ignore)")
        self.matrix += torch.bincount(t * n + p, minlength=n * n).view(n, n)

    def compute(self) -> dict[str, Any]:
        """{"miou", "miou16", "miou13", "pixel_acc": float, "iou": list of num_classes floats (NaN for a
        class absent from ground truth and prediction)}; fractions in [0, 1]."""
        n = self.num_classes
        mat = (self.matrix if self.matrix is not None else torch.zeros(n, n, dtype=torch.int64))
        mat = mat.detach().to("cpu", torch.float64)
        tp = mat.diag()
        fp = mat.sum(0) - tp
        fn = mat.sum(1) - tp
        denom = tp + fp + fn
        iou = [float(tp[c] / denom[c]) if denom[c] > 0 else math.nan for c in range(n)]
        total = float(mat.sum())
        return {
            "miou": _nanmean(iou),
            "miou16": _nanmean(iou[c] for c in SYNTHIA16 if c < n),
            "miou13": _nanmean(iou[c] for c in SYNTHIA13 if c < n),
            "pixel_acc": float(tp.sum()) / total if total > 0 else math.nan,
            "iou": iou,
        }


# --------------------------------------------------------------------------------------------------
# inference

def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def slide_inference(model: nn.Module, x: torch.Tensor, crop: int | Sequence[int],
                    stride: int | Sequence[int] | None = None) -> torch.Tensor:
    """Logits of `x` (B x 3 x H x W, normalised) from windows of size `crop` (h, w) every `stride`
    pixels (default: 2/3 of the crop), the last window flush with the border; where windows overlap,
    their logits are averaged. A crop at least as large as the image gives one window = whole image."""
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride") if stride is not None else (max(1, 2 * ch // 3), max(1, 2 * cw // 3))
    if sh > ch or sw > cw:
        raise ValueError(f"stride {(sh, sw)} larger than crop {(ch, cw)} would leave pixels unpredicted")
    b, _, h, w = x.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out: torch.Tensor | None = None
    count = x.new_zeros((1, 1, h, w))
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits = model(x[:, :, y1:y2, x1:x2])
            if out is None:
                out = x.new_zeros((b, logits.shape[1], h, w))
            out[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    assert out is not None
    return out / count


def inference(model: nn.Module, x: torch.Tensor, mode: str = "whole", crop: Any = None,
              stride: Any = None) -> torch.Tensor:
    """Logits at the input resolution: `whole` = one forward pass; `slide` = `slide_inference`."""
    if mode == "whole":
        return model(x)
    if mode == "slide":
        if crop is None:
            raise ValueError("sliding-window inference needs crop=(height, width)")
        return slide_inference(model, x, crop, stride)
    raise ValueError(f"inference mode {mode!r}: expected 'whole' or 'slide'")


def collate_by_size(items: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    """One batch of dataset items: stacked when every image (and label) has the same size, else a list of
    stacked batches, one per run of consecutive same-size items (the order kept)."""
    from torch.utils.data import default_collate

    groups: list[list[dict[str, Any]]] = []
    for item in items:
        if not groups or (item["image"].shape, item["label"].shape) != (groups[-1][0]["image"].shape,
                                                                         groups[-1][0]["label"].shape):
            groups.append([])
        groups[-1].append(item)
    batches = [default_collate(g) for g in groups]
    return batches[0] if len(batches) == 1 else batches


def val_loader(dataset, batch_size: int = 1, workers: int = 0,
               pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The validation set in order, `batch_size` items per batch (`collate_by_size`)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate_by_size, pin_memory=pin_memory)


def evaluate(model: nn.Module, loader: Iterable[dict[str, Any] | list[dict[str, Any]]], device: torch.device | str,
             mode: str = "whole", crop: Any = None, stride: Any = None,
             mean: Sequence[float] = MEAN, std: Sequence[float] = STD, max_images: int | None = None,
             num_classes: int = NUM_CLASSES, autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Evaluate `model` on the dataset items of `loader` ({"image": uint8 [B]x3xHxW, "label": int64
    [B]xHxW}, or a list of such batches: `collate_by_size`); images are normalised on the device with
    `mean`/`std` (0-255 units). `autocast_dtype`: the forward passes run in autocast (bf16/fp16), the
    logits are scored in fp32. Logits are resized to the label's size if they differ. Returns
    `ConfusionMatrix.compute()` plus `num_images`; the model is evaluated in eval mode and put back in its
    previous mode."""
    device = torch.device(device)

    def amp() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    cm = ConfusionMatrix(num_classes, device=device)
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: a model may cache tensors it later trains with
            for item in loader:
                for batch in item if isinstance(item, list) else [item]:
                    images, labels = batch["image"], batch["label"]
                    if images.dim() == 3:
                        images, labels = images.unsqueeze(0), labels.unsqueeze(0)
                    if max_images is not None:
                        images, labels = images[: max_images - seen], labels[: max_images - seen]
                    x = (images.to(device, non_blocking=True).float() - mean_t) / std_t
                    with amp():
                        logits = inference(model, x, mode, crop, stride)
                    logits = logits.float()
                    labels = labels.to(device, non_blocking=True)
                    if logits.shape[-2:] != labels.shape[-2:]:
                        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
                    cm.update(logits.argmax(1), labels)
                    seen += images.shape[0]
                    if max_images is not None and seen >= max_images:
                        break
                if max_images is not None and seen >= max_images:
                    break
    finally:
        model.train(was_training)
    result = cm.compute()
    result["num_images"] = seen
    return result

"""Helpers the auxiliary tasks share: random token/block masks, the pseudo-label cross-entropy,
the (optionally colour-augmented) target view, the host's mixed image, SePiCo's purity-aware label
down-sampling, and the model passes the host and the tasks call on any architecture (single-view
segmentors and HRDA's two views: `predict`, `view_features`, `train_features`, `features_loss`,
`seg_loss`).

Not a task itself (nothing here is registered); `methods/contrastive.py`, `mim.py` and `mfm.py` use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.labels import IGNORE_INDEX
from methods.base import StepContext


def random_keep(batch: int, height: int, width: int, ratio: float, device: torch.device | str,
                dtype: torch.dtype = torch.float32,
                region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """A fresh per-sample Bernoulli keep mask `B x 1 x h x w` (1 = visible, 0 = masked).

    Each cell is masked independently with probability `ratio`, so the realised ratio matches it in
    expectation, not exactly (as in MIC and MFM: ``keep = U(0, 1) > ratio``). A sample whose every cell
    drew "masked" keeps its highest draw visible: on the small grids of CPU-scale images (a 64x128 image
    in 32-pixel blocks has 8) a fully masked sample is frequent (0.7^8 = 6%), carries nothing to
    predict from, and an all-zero image made the PVTv2 encoder's gradients non-finite. With `region`
    (rows r1:r2, columns c1:c2 of the grid: the cells an encoder will see alone, HRDA's detail crop) the
    same holds inside it: a sample whose region drew only "masked" keeps the region's highest draw.
    """
    u = torch.rand(batch, 1, height, width, device=device)
    keep = u > ratio
    flat = keep.view(batch, -1)
    none = ~flat.any(1)
    if none.any():
        best = u.view(batch, -1).argmax(1)
        flat[none, best[none]] = True
    if region is not None:
        r1, r2, c1, c2 = region
        inner, u_in = keep[:, 0, r1:r2, c1:c2], u[:, 0, r1:r2, c1:c2]
        flat, none = inner.reshape(batch, -1), ~inner.reshape(batch, -1).any(1)
        if none.any():
            best = u_in.reshape(batch, -1).argmax(1)
            flat[none, best[none]] = True
            keep[:, 0, r1:r2, c1:c2] = flat.view_as(inner)
    return keep.to(dtype)


def block_keep(images: torch.Tensor, block: int, ratio: float,
               box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """MIC's block mask for `images` (B x C x H x W): a keep mask on a grid of `block` x `block` pixel
    blocks, nearest-upsampled to `B x 1 x H x W`. With `box` (y1, y2, x1, x2 in pixels: the crop HRDA's
    training pass will encode alone) a block overlapping it stays visible (`random_keep`'s `region`)."""
    b, _, h, w = images.shape
    region = None
    if box is not None:
        y1, y2, x1, x2 = box
        region = (y1 // block, math.ceil(y2 / block), x1 // block, math.ceil(x2 / block))
    keep = random_keep(b, math.ceil(h / block), math.ceil(w / block), ratio, images.device, images.dtype, region)
    return keep.repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :h, :w]


def require_pseudo_labels(ctx: StepContext, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The host's pseudo-labels and weights, or a clear error when the host gave none."""
    if ctx.pseudo_label is None:
        raise RuntimeError(
            f"auxiliary task '{task}' needs the teacher's pseudo-labels (ctx.pseudo_label), but the "
            f"host did not set them at iteration {ctx.iteration}; use a self-training host such as 'dacs'")
    weight = ctx.pseudo_weight
    if weight is None:
        weight = torch.ones_like(ctx.pseudo_label, dtype=torch.float32)
    return ctx.pseudo_label, weight


def require_mixed(ctx: StepContext, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The host's augmented mixed image, its mixed label and pixel weight (`ctx.extras`, methods/base.py),
    or a clear error when the host made none."""
    missing = [k for k in ("mixed_image", "mixed_label", "mixed_weight") if k not in ctx.extras]
    if missing:
        raise RuntimeError(
            f"auxiliary task '{task}' needs the host's mixed image, label and weight (ctx.extras "
            f"{', '.join(repr(k) for k in missing)} missing at iteration {ctx.iteration}); use a host that "
            "mixes, such as 'dacs', or the task's clean-target option")
    return ctx.extras["mixed_image"], ctx.extras["mixed_label"], ctx.extras["mixed_weight"]


def target_view(ctx: StepContext, color_aug: bool) -> torch.Tensor:
    """The target batch the student sees: the host's strong colour/blur augmentation if asked for and
    available, else the clean image."""
    if color_aug and ctx.augment is not None:
        return ctx.augment(ctx.target_image)
    return ctx.target_image


def weighted_ce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pixel-weighted cross-entropy (DACS/MIC style): logits are bilinearly resized to the label size,
    ignore pixels contribute 0, and the mean runs over all pixels."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weight).mean()


def downscale_label(label: torch.Tensor, size: tuple[int, int], num_classes: int,
                    min_purity: float = 0.75) -> torch.Tensor:
    """Area-majority down-sampling of a `B x H x W` label map to `size` (SePiCo / DAFormer).

    Each output cell takes the majority class of the pixels it covers (ignore counted as a class of its
    own); cells whose majority covers less than `min_purity` of them, or is ignore, become ignore.
    """
    if tuple(label.shape[-2:]) == tuple(size):
        return label.clone()
    lab = label.clone()
    lab[(lab == IGNORE_INDEX) | (lab < 0) | (lab >= num_classes)] = num_classes
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    share = F.adaptive_avg_pool2d(onehot, size)
    purity, out = share.max(dim=1)
    out[(out == num_classes) | (purity < min_purity)] = IGNORE_INDEX
    return out


def crop(t: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """`t[..., y1:y2, x1:x2]` of a crop box (the region a model's logits cover, e.g. HRDA's detail crop;
    `Segmentor.seg_loss`), or `t` when there is none."""
    return t if box is None else t[..., box[0]:box[1], box[2]:box[3]]


def single_view(model: torch.nn.Module) -> bool:
    """Whether `model(x)` is `decode(encode(x))` resized (Segmentor.single_view; True for a plain module).
    False for HRDA (harness/models/hrda.py), whose training pass is two views: the helpers below dispatch."""
    return getattr(model, "single_view", True)


# One model interface for the host and the tasks, whatever the architecture. A single-view model's
# training-pass features are `encode(x)` (a list of stages); HRDA's are a `Views` (its context view and
# detail crop, each a list of stages, and the crop's box).

def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inference-path logits at the input size, whatever the modules' training flags (a teacher whose
    BatchNorm runs on batch statistics): HRDA's `predict` (context + detail windows, fused, as the
    official `generate_pseudo_label`), else `model(x)`."""
    return model.predict(x) if not single_view(model) else model(x)


def view_features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder stages the feature distance and the one-view tasks (contrastive, mim recon) read:
    `encode(x)`, or HRDA's context view's (its `feature_scale` 0.5)."""
    return model.view_features(x) if not single_view(model) else model.encode(x)


def train_features(model: torch.nn.Module, x: torch.Tensor):
    """The encoder half of a training pass: `encode(x)`, or HRDA's `encode_views(x)` (a random detail crop)."""
    return model.encode_views(x) if not single_view(model) else model.encode(x)


def features_loss(model: torch.nn.Module, feats, size: tuple[int, int], criterion) -> torch.Tensor:
    """The decoder half and the loss of a training pass on `feats` (of `train_features`, possibly rebuilt):
    `criterion(logits, None)` with `decode(feats)` resized to `size`, or HRDA's `views_loss` (the fused
    and the detail crop's loss). `criterion(logits, box)`: see `seg_loss`."""
    if not single_view(model):
        return model.views_loss(feats, criterion)
    logits = F.interpolate(model.decode(feats), size=size, mode="bilinear", align_corners=False)
    return criterion(logits, None)


def each_view(feats) -> list[list[torch.Tensor]]:
    """The stage lists of `train_features`' result: one for a single view, HRDA's context then detail."""
    return [feats.context, feats.detail] if hasattr(feats, "box") else [feats]


def training_box(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The crop a training pass of `x` encodes on its own, drawn now (HRDA's random detail crop), or None."""
    return model.detail_box(*x.shape[-2:]) if not single_view(model) else None


def seg_loss(model: torch.nn.Module, x: torch.Tensor, criterion,
             box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """`model.seg_loss(x, criterion)` (harness.models.base.Segmentor; HRDA adds its detail crop, at `box`
    if given, e.g. from `training_box`), or `criterion(model(x), None)` for a plain module.
    `criterion(logits, box)` scores logits covering the whole label (`box` None) or
    `label[..., y1:y2, x1:x2]` (HRDA's detail crop; `crop`)."""
    if box is not None:
        return model.seg_loss(x, criterion, box)
    own = getattr(model, "seg_loss", None)
    return own(x, criterion) if own is not None else criterion(model(x), None)

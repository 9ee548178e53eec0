"""Helpers the auxiliary tasks share: random token/block masks, the pseudo-label cross-entropy,
the (optionally colour-augmented) target view, the host's mixed image, SePiCo's purity-aware label
down-sampling, and the crop of a label or weight to the logits of a model's crop (`crop`; the model
passes the hosts and the tasks call on every architecture are `Segmentor`'s, harness/models/base.py).

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
    `Segmentor.views_loss`), or `t` when there is none."""
    return t if box is None else t[..., box[0]:box[1], box[2]:box[3]]

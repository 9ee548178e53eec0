"""HRDA (harness/models/hrda.py, the DACS host's passes on it in methods/dacs.py) against the
official code, lhoyer/HRDA, on hand-made (seeded random) weights.

The official computation is re-derived below in plain torch, in the official structure, from
`mmseg/models/segmentors/hrda_encoder_decoder.py` (get_crop_bbox, crop, `_forward_train_features`,
`extract_slide_feat`, `encode_decode`), `mmseg/models/decode_heads/hrda_head.py` (HRDAHead.forward,
`decode_hr`, `losses`), `mmseg/models/decode_heads/decode_head.py` (BaseDecodeHead.losses: the logits
resized to the label, CE with ignore 255 averaged over all pixels, times `seg_weight`) and
`mmseg/models/uda/dacs.py` (the pseudo-label and the mixed loss), with the values of
`configs/hrda/gtaHR2csHR_hrda.py` (scales [1, 0.5], crop_coord_divisible 8, hr_loss_weight 0.1,
attention_classwise, hr_slide_inference). udabench's own modules stand in for the official 'backbone'
(`model.encode`), 'head' (`model.decode`) and 'scale_attention' (`model.attention`), so both sides share
the weights and any difference is the HRDA arithmetic around them.

Dropout is 0 in the heads so the modules are deterministic in training mode, where their BatchNorm runs
on batch statistics (which images share a batch then matters, and is checked too). The official draws
the detail crop with numpy and udabench with torch: the box is passed explicitly, and the boxes each can
draw are enumerated and compared on their own.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from harness.config import MethodConfig
from harness.models import create_segmentor
from harness.models.hrda import HRDA
from methods import HOSTS
from methods.base import StepContext
from methods.dacs import class_mix_masks

Box = tuple[int, int, int, int]  # y1, y2, x1, x2
NUM_CLASSES = 5
SMALL = dict(backbone="pvt_v2_b0", num_classes=NUM_CLASSES, base_options={"embed_dim": 16, "dropout": 0.0},
             detail_crop=(64, 64), attention_embed_dim=8)
# the scale attention: learned per class (the official config), learned per pixel, a constant (no head)
ATTENTION = {"classwise": {}, "pixelwise": {"attention_classwise": False}, "fixed": {"fixed_attention": 0.75}}
# both sides run the same float32 operations on the same tensors in the same order: equal to the bit
EXACT = dict(rtol=0, atol=0)
pytestmark = pytest.mark.usefixtures("one_thread")


def hrda(attention: str = "classwise", seed: int = 0, **kw) -> HRDA:
    """A small HRDA (the CPU scale's encoder), training mode, weights drawn after `manual_seed(seed)`."""
    torch.manual_seed(seed)
    return create_segmentor("hrda", **{**SMALL, **ATTENTION[attention], **kw}).train()


def image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A smooth random image (noise upsampled), so the encoder's activations are not all noise."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    return F.interpolate(torch.randn(b, c, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear",
                         align_corners=False) + 0.1 * torch.randn(shape, generator=g)


def label(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Random classes with some ignore (255) pixels."""
    g = torch.Generator().manual_seed(seed)
    lbl = torch.randint(0, NUM_CLASSES, shape, generator=g)
    lbl[torch.rand(shape, generator=g) < 0.1] = 255
    return lbl


# --------------------------------------------------------------------------------------------------
# the official computation, re-derived

def get_crop_bbox(img_h: int, img_w: int, crop_size: tuple[int, int], divisible: int,
                  randint: Callable[[int, int], int]) -> Box:
    """hrda_encoder_decoder.get_crop_bbox: the whole image if it is the crop, else offsets drawn in
    [0, (margin + 1) // divisible) times `divisible` (`randint` is numpy's: it refuses low >= high)."""
    if (img_h, img_w) == tuple(crop_size):
        return 0, img_h, 0, img_w
    margin_h, margin_w = max(img_h - crop_size[0], 0), max(img_w - crop_size[1], 0)
    y = randint(0, (margin_h + 1) // divisible) * divisible
    x = randint(0, (margin_w + 1) // divisible) * divisible
    return y, y + crop_size[0], x, x + crop_size[1]


def crop(t: torch.Tensor, box: Box) -> torch.Tensor:
    """hrda_encoder_decoder.crop: the box of the last two dimensions."""
    y1, y2, x1, x2 = box
    return t[..., y1:y2, x1:x2]


def scale_box(box: Box, scale: float) -> Box:
    """hrda_head.scale_box: each coordinate divided by `scale` and truncated (int)."""
    return tuple(int(v / scale) for v in box)


def bilinear(t: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
    """mmseg's `resize` as HRDA calls it: bilinear, align_corners=False."""
    return F.interpolate(t, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=False)


@dataclass
class OfficialHRDA:
    """HRDAEncoderDecoder + HRDAHead (DAFormerHead, output stride 4) around the given modules."""

    backbone: Callable[[torch.Tensor], list[torch.Tensor]]
    head: Callable[[list[torch.Tensor]], torch.Tensor]
    scale_attention: Callable[[list[torch.Tensor]], torch.Tensor] | None
    fixed_attention: float | None = None
    hr_crop_size: tuple[int, int] = (64, 64)
    crop_coord_divisible: int = 8
    hr_loss_weight: float = 0.1
    hr_slide_inference: bool = True
    hr_slide_overlapping: bool = True
    scales: tuple[float, ...] = tuple(sorted([1, 0.5]))  # the config's [1, 0.5], sorted by __init__
    os: int = 4

    @classmethod
    def around(cls, model: HRDA, **kw) -> OfficialHRDA:
        o = model.options
        return cls(model.encode, model.decode, model.attention, o.fixed_attention, tuple(o.detail_crop),
                   model.divisible, o.detail_loss_weight, **kw)

    # HRDAEncoderDecoder ---------------------------------------------------------------------------

    def forward_train_features(self, img: torch.Tensor, box: Box) -> list:
        """`_forward_train_features`: each scale's image (bilinear resize, also at scale 1), the detail
        scale's cropped at the training box, through the backbone."""
        feats = []
        for i, s in enumerate(self.scales):
            scaled = bilinear(img, scale_factor=s)
            if i >= 1:
                scaled = crop(scaled, box)
            feats.append(self.backbone(scaled))
        return feats

    def extract_slide_feat(self, img: torch.Tensor) -> dict:
        """The detail windows of inference: `hr_crop_size` windows at half a window's stride (a window's
        without overlap), the last ones moved back inside the image, encoded as one batch."""
        h_crop, w_crop = self.hr_crop_size
        h_stride, w_stride = (h_crop // 2, w_crop // 2) if self.hr_slide_overlapping else (h_crop, w_crop)
        _, _, h_img, w_img = img.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        crops, boxes = [], []
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crops.append(img[:, :, y1:y2, x1:x2])
                boxes.append([y1, y2, x1, x2])
        return {"features": self.backbone(torch.cat(crops)), "boxes": boxes}

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """Inference (and `generate_pseudo_label`): the context scale whole, the detail scale in windows
        (or whole without `hr_slide_inference`), fused without a crop box, resized to the input."""
        feats = []
        for i, s in enumerate(self.scales):
            scaled = img if s == 1 else bilinear(img, scale_factor=s)
            feats.append(self.extract_slide_feat(scaled) if i >= 1 and self.hr_slide_inference
                         else self.backbone(scaled))
        fused = self.head_forward(feats, None)[0]
        return bilinear(fused, size=img.shape[2:])

    def forward_train(self, img: torch.Tensor, gt: torch.Tensor, seg_weight: torch.Tensor | None,
                      box: Box) -> torch.Tensor:
        """`forward_train` -> HRDAHead.forward_train, the loss terms summed as `_parse_losses` does."""
        logits = self.head_forward(self.forward_train_features(img, box), box)
        return sum(self.head_losses(logits, gt, seg_weight, box).values())

    # HRDAHead -------------------------------------------------------------------------------------

    def decode_hr(self, inp, bs: int) -> torch.Tensor:
        """The detail logits: of the one crop, or of the windows, padded into place and averaged."""
        if not isinstance(inp, dict):
            return self.head(inp)
        boxes = [scale_box(b, self.os) for b in inp["boxes"]]
        h_img, w_img = max(b[1] for b in boxes), max(b[3] for b in boxes)
        logits = self.head(inp["features"])
        preds = logits.new_zeros(bs, logits.shape[1], h_img, w_img)
        count = logits.new_zeros(bs, 1, h_img, w_img)
        for i, (y1, y2, x1, x2) in enumerate(boxes):
            preds = preds + F.pad(logits[i * bs:(i + 1) * bs], (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
        assert bool((count > 0).all())
        return preds / count

    def head_forward(self, inputs: list, box: Box | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """HRDAHead.forward: (fused, (1 - att) * lr, hr); with a training box the attention is masked to
        the box's context cells and the detail logits inserted at the box's detail cells."""
        lr_inp, hr_inp = inputs
        lr_scale, hr_scale = self.scales
        lr_seg = self.head(lr_inp)
        hr_seg = self.decode_hr(hr_inp, lr_inp[0].shape[0])
        att = torch.sigmoid(self.scale_attention(lr_inp)) if self.scale_attention is not None \
            else self.fixed_attention
        if box is not None:
            mask = lr_seg.new_zeros([lr_seg.shape[0], 1, *lr_seg.shape[2:]])
            y1, y2, x1, x2 = scale_box(box, self.os / lr_scale)
            mask[:, :, y1:y2, x1:x2] = 1
            att = att * mask
        lr_seg = (1 - att) * lr_seg
        up_lr_seg = bilinear(lr_seg, scale_factor=hr_scale / lr_scale)
        if torch.is_tensor(att):
            att = bilinear(att, scale_factor=hr_scale / lr_scale)
        if box is not None:
            inserted = torch.zeros_like(up_lr_seg)
            y1, y2, x1, x2 = scale_box(box, self.os)
            inserted[:, :, y1:y2, x1:x2] = hr_seg
        else:
            inserted = hr_seg
        return att * inserted + up_lr_seg, lr_seg, hr_seg

    def head_losses(self, logits, gt: torch.Tensor, seg_weight: torch.Tensor | None,
                    box: Box) -> dict[str, torch.Tensor]:
        """HRDAHead.losses (lr_loss_weight 0): the fused loss x (1 - hr_w), the detail logits' loss on
        the cropped label and weight x hr_w."""
        fused, _, hr_seg = logits
        losses = {"loss_seg": base_loss(fused, gt, seg_weight)}
        if self.hr_loss_weight == 0:
            return losses
        losses["hr.loss_seg"] = base_loss(hr_seg, crop(gt, box), None if seg_weight is None
                                          else crop(seg_weight, box))
        losses["loss_seg"] = losses["loss_seg"] * (1 - 0 - self.hr_loss_weight)
        losses["hr.loss_seg"] = losses["hr.loss_seg"] * self.hr_loss_weight
        return losses


def base_loss(logit: torch.Tensor, gt: torch.Tensor, seg_weight: torch.Tensor | None) -> torch.Tensor:
    """BaseDecodeHead.losses with mmseg's CrossEntropyLoss: the logits resized to the label, CE per pixel
    (ignore 255 -> 0), times the pixel weight, averaged over all pixels."""
    logit = bilinear(logit, size=gt.shape[-2:])
    loss = F.cross_entropy(logit, gt, reduction="none", ignore_index=255)
    if seg_weight is not None:
        loss = loss * seg_weight.float()
    return loss.mean()


def official_pseudo_label(teacher: OfficialHRDA, target: torch.Tensor, threshold: float,
                          valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """DACS.forward_train's pseudo-label: argmax of the softmax of `generate_pseudo_label`, weight the
    share of pixels whose probability reaches the threshold (one number), times the valid mask."""
    with torch.no_grad():
        probs = torch.softmax(teacher.encode_decode(target), dim=1)
    prob, pl = torch.max(probs, dim=1)
    share = torch.sum(prob.ge(threshold).long() == 1).item() / pl.numel()
    weight = share * torch.ones(prob.shape)
    if valid is not None:
        weight = weight * valid
    return pl, weight


def mmseg_ce(gt: torch.Tensor, weight: torch.Tensor | None = None):
    """udabench's criterion with mmseg's CE (`method.source_ce_mean: all`): the logits' label (and weight)
    cropped at the box when there is one, CE averaged over all pixels."""
    def criterion(logits: torch.Tensor, box: Box | None) -> torch.Tensor:
        g = gt if box is None else crop(gt, box)
        ce = F.cross_entropy(logits, g, ignore_index=255, reduction="none")
        return (ce if weight is None else ce * (weight if box is None else crop(weight, box))).mean()
    return criterion


# --------------------------------------------------------------------------------------------------
# 1. the detail crop's box

def reachable(draw: Callable[[Callable[[int, int], int]], Box]) -> set[Box]:
    """Every box `draw(randint)` can return: a first call records the [low, high) ranges it asks
    `randint` for, then each combination of values in them is forced. `randint` refuses low >= high,
    as numpy's does."""
    ranges: list[tuple[int, int]] = []

    def record(low: int, high: int) -> int:
        if low >= high:
            raise ValueError("low >= high")
        ranges.append((low, high))
        return low

    draw(record)
    boxes = set()
    for values in itertools.product(*(range(lo, hi) for lo, hi in ranges)):
        forced = iter(values)
        boxes.add(draw(lambda low, high, _forced=forced: next(_forced)))
    return boxes


def udabench_boxes(model: HRDA, h: int, w: int, monkeypatch) -> set[Box]:
    """`detail_box`'s reachable boxes, its `torch.randint` draws routed to `reachable`'s randint."""
    def draw(randint):
        with monkeypatch.context() as m:
            m.setattr(torch, "randint", lambda low, high, size, **_: torch.tensor(randint(low, high)))
            return model.detail_box(h, w)
    return reachable(draw)


@pytest.mark.parametrize(("crop_size", "divisible", "sizes"), [
    ((64, 64), None, [(128, 256), (64, 64), (72, 136), (71, 100), (100, 130), (128, 72)]),
    ((32, 48), 16, [(64, 96), (80, 100), (47, 63)]),
])
def test_detail_box_reaches_exactly_the_official_crop_boxes(crop_size, divisible, sizes, monkeypatch):
    m = hrda(detail_crop=crop_size, crop_coord_divisible=divisible)
    for h, w in sizes:
        official = reachable(lambda randint, _h=h, _w=w: get_crop_bbox(_h, _w, crop_size, m.divisible, randint))
        assert udabench_boxes(m, h, w, monkeypatch) == official, (h, w)
    # e.g. 128 x 256 with 64 x 64 on the 8-grid: rows 0..56 (not 64: (64 + 1) // 8 = 8 offsets), columns 0..184
    if crop_size == (64, 64):
        boxes = udabench_boxes(m, 128, 256, monkeypatch)
        assert {b[0] for b in boxes} == set(range(0, 57, 8)) and {b[2] for b in boxes} == set(range(0, 185, 8))


def test_where_only_one_side_is_the_crop_the_official_draw_fails_and_udabench_takes_offset_0(monkeypatch):
    """get_crop_bbox with a side equal to the crop's (but not both): numpy's randint(0, 0) raises; udabench
    draws that side's offset 0 (its only possible offset)."""
    m = hrda()
    with pytest.raises(ValueError):
        reachable(lambda randint: get_crop_bbox(64, 128, (64, 64), 8, randint))
    assert udabench_boxes(m, 64, 128, monkeypatch) == {(0, 64, x, x + 64) for x in range(0, 57, 8)}


# --------------------------------------------------------------------------------------------------
# 2. one training pass: fused logits, detail logits, loss

BOXES = [(24, 88, 40, 104), (0, 64, 0, 64), (64, 128, 192, 256)]  # inside, top-left, bottom-right corner


@pytest.mark.parametrize("attention", list(ATTENTION))
def test_training_pass_logits_and_loss_are_the_official(attention, monkeypatch):
    m = hrda(attention)
    official = OfficialHRDA.around(m)
    x, gt = image((2, 3, 128, 256), 1), label((2, 128, 256), 2)
    for box in BOXES:
        views = m.encode_views(x, box)
        fused, detail = m.decode_views(views)
        loss = m.views_loss(views, mmseg_ce(gt))
        o_fused, _, o_hr = official.head_forward(official.forward_train_features(x, box), box)
        torch.testing.assert_close(fused, o_fused, **EXACT)
        torch.testing.assert_close(detail, o_hr, **EXACT)
        torch.testing.assert_close(loss, official.forward_train(x, gt, None, box), **EXACT)
        # a training-mode forward is that pass's fused logits at the input size
        monkeypatch.setattr(m, "detail_box", lambda h, w, _b=box: _b)
        torch.testing.assert_close(m(x), bilinear(o_fused, size=x.shape[-2:]), **EXACT)
    if attention == "fixed":  # a constant: no attention head, no parameters for it
        assert m.attention is None and not any("attention" in n for n, _ in m.named_parameters())
        assert sum(map(len, m.param_groups().values())) == len(list(m.parameters()))


def test_the_detail_loss_weight_0_is_the_fused_loss_alone():
    m = hrda(detail_loss_weight=0.0)
    official = OfficialHRDA.around(m)
    x, gt = image((2, 3, 128, 256), 3), label((2, 128, 256), 4)
    box = BOXES[0]
    torch.testing.assert_close(m.seg_loss(x, mmseg_ce(gt), box), official.forward_train(x, gt, None, box), **EXACT)


# --------------------------------------------------------------------------------------------------
# 3. inference (the pseudo-labels' path): the context view and overlapping detail windows, fused

@pytest.mark.parametrize("attention", list(ATTENTION))
@pytest.mark.parametrize("size", [(128, 256), (112, 240)])  # 3 x 7 windows; the last row/column moved back
def test_inference_logits_are_the_official_encode_decode(attention, size):
    m = hrda(attention)
    x = image((2, 3, *size), 5)
    with torch.no_grad():
        for mode in ("eval", "train"):  # train: BatchNorm on batch statistics (all windows one batch)
            m.train(mode == "train")
            torch.testing.assert_close(m.predict(x), OfficialHRDA.around(m).encode_decode(x), **EXACT)


def test_inference_without_overlap_is_the_official_non_overlapping_windows():
    """`slide_detail: false` is the official `hr_slide_overlapping=False` (windows side by side); the
    official `hr_slide_inference=False` (the whole image through the encoder at once) has no counterpart."""
    m = hrda(slide_detail=False).eval()
    x = image((2, 3, 112, 240), 6)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x), OfficialHRDA.around(m, hr_slide_overlapping=False)
                                   .encode_decode(x), **EXACT)


# --------------------------------------------------------------------------------------------------
# 4. a DACS step on HRDA: the source loss, the pseudo-label and the mixed loss

@pytest.mark.parametrize("attention", ["classwise", "fixed"])
def test_dacs_step_losses_are_the_official(attention, monkeypatch):
    student = hrda(attention)
    src, gt = image((2, 3, 128, 256), 7), label((2, 128, 256), 8)
    target = image((2, 3, 128, 256), 9)
    valid = torch.ones(2, 128, 256, dtype=torch.bool)  # pseudo-label margins (HRDA's crop_pseudo_margins)
    valid[:, :6], valid[1, :, -10:] = False, False
    # a threshold between two of the official teacher's confidences near their median (the share ~ 1/2)
    teacher = copy.deepcopy(student)  # the host's teacher is such a copy of the student
    with torch.no_grad():
        conf = torch.softmax(OfficialHRDA.around(teacher).encode_decode(target), 1).amax(1).flatten().sort()[0]
    threshold = float(conf[conf.numel() // 2: conf.numel() // 2 + 2].mean())
    cfg = MethodConfig(source_ce_mean="all", teacher_bn="batch", pseudo_threshold=threshold)
    host = HOSTS.get("dacs")(cfg, student)
    host.train()

    drawn, masks, losses = [], [], {}  # the detail boxes drawn (source, mixed), the ClassMix mask, the losses
    encode_views = student.encode_views

    def recording_encode_views(x, box=None):
        views = encode_views(x, box)
        drawn.append(views.box)
        return views

    def recording_class_mix_masks(*args):
        masks.append(class_mix_masks(*args))
        return masks[-1]

    monkeypatch.setattr(student, "encode_views", recording_encode_views)
    monkeypatch.setattr("methods.dacs.class_mix_masks", recording_class_mix_masks)
    ctx = StepContext(iteration=1, source_image=src, source_label=gt, target_image=target, student=student,
                      pseudo_valid=valid, mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1) / 255)
    torch.manual_seed(11)
    host.step(ctx, lambda name, loss, retain_graph=False: losses.__setitem__(name, loss.detach()))
    assert list(losses) == ["sup", "uda"] and len(drawn) == 2 and len(masks) == 1

    # the official teacher: the whole model in training mode (BatchNorm on batch statistics), dropout off
    host.teacher.train()
    o_teacher, o_student = OfficialHRDA.around(host.teacher), OfficialHRDA.around(student)
    pl, pw = official_pseudo_label(o_teacher, target, threshold, valid)
    assert 0.3 < ctx.stats["pseudo_weight"] < 0.7
    assert torch.equal(ctx.pseudo_label, pl)
    torch.testing.assert_close(ctx.pseudo_weight, pw, **EXACT)
    with torch.no_grad():
        torch.testing.assert_close(losses["sup"], o_student.forward_train(src, gt, None, drawn[0]), **EXACT)
        # ClassMix (its mask recorded; the mixing and the augmentation are not HRDA's): source pixels keep
        # their label and weight 1, so the weight varies inside the detail crop and must be cropped with it
        mix = masks[0]
        mixed_label, mixed_weight = torch.where(mix, gt, pl), torch.where(mix, torch.ones_like(pw), pw)
        assert torch.equal(ctx.extras["mixed_label"], mixed_label)
        assert torch.equal(ctx.extras["mixed_weight"], mixed_weight)
        assert crop(mixed_weight, drawn[1]).unique().numel() > 1
        want = o_student.forward_train(ctx.extras["mixed_image"], mixed_label, mixed_weight, drawn[1])
        torch.testing.assert_close(losses["uda"], want, **EXACT)


# --------------------------------------------------------------------------------------------------
# 5. a detail crop whose size is not on the 8-grid: the attention mask's last cell, truncated as scale_box

def test_a_detail_crop_off_the_grid_masks_the_attention_as_the_official():
    m = hrda(detail_crop=(36, 36))
    official = OfficialHRDA.around(m)
    x = image((2, 3, 64, 64), 12)
    box = (8, 44, 24, 60)  # rows 8..44: int(44 / 8) = 5, round(5.5) = 6; columns 24..60: int 7, round(7.5) 8
    fused, _ = m.decode_views(m.encode_views(x, box))
    want = official.head_forward(official.forward_train_features(x, box), box)[0]
    # both truncate: context rows 1..4 and columns 3..6 (rounding half to even would keep rows 1..5, columns 3..7)
    torch.testing.assert_close(fused, want, **EXACT)

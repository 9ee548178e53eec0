"""HRDA (harness/models/hrda.py): the two views, their alignment and fusion, the detail loss, the
sliding windows of inference, and bad sizes refused with a message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.models import create_segmentor

SMALL = dict(backbone="pvt_v2_b0", num_classes=5, base_options={"embed_dim": 16}, detail_crop=(32, 32),
             attention_embed_dim=8)
pytestmark = pytest.mark.usefixtures("one_thread")


def hrda(**kw):
    torch.manual_seed(0)
    return create_segmentor("hrda", **{**SMALL, **kw})


class Constant(nn.Module):
    """An attention head whose sigmoid is `value` everywhere (logit of value)."""

    def __init__(self, value: float, channels: int) -> None:
        super().__init__()
        self.logit = torch.logit(torch.tensor(value)) if 0 < value < 1 else torch.tensor(60.0 if value else -60.0)
        self.channels = channels

    def forward(self, feats):
        f = feats[0]
        return self.logit.expand(f.shape[0], self.channels, *f.shape[-2:])


def test_attention_is_a_weight_and_zero_outside_the_detail_crop():
    m = hrda().train()
    x = torch.randn(2, 3, 64, 64)
    context, attention = m.context(m.view_features(x))
    assert context.shape == attention.shape == (2, 5, 8, 8)  # 32x32 context view at stride 4, class-wise
    assert float(attention.detach().min()) >= 0 and float(attention.detach().max()) <= 1
    seen = {}
    m.fuse = lambda c, a, d, box, _f=m.fuse: seen.setdefault("a", (a, box)) and _f(c, a, d, box)
    m(x)
    a, (y1, y2, x1, x2) = seen["a"]
    assert (y2 - y1, x2 - x1) == (32, 32)
    # fuse masks the attention at context resolution: cells outside the box / (stride / context scale)
    m2 = hrda().train()
    m2.attention = Constant(1.0, 5)
    ctx, att = m2.context(m2.view_features(x))
    box = (16, 48, 8, 40)
    fused = m2.fuse(torch.zeros_like(ctx), att, torch.ones(2, 5, 8, 8), box)
    inside = fused[:, :, 16 // 4 + 1:48 // 4 - 1, 8 // 4 + 1:40 // 4 - 1]
    assert torch.allclose(inside, torch.ones_like(inside), atol=1e-6)  # detail placed at box / 4
    assert float(fused[:, :, :3].abs().max()) == 0 and float(fused[:, :, 13:].abs().max()) == 0


def test_with_zero_attention_the_fused_logits_are_the_upsampled_context():
    m = hrda().train()
    m.attention = Constant(0.0, 5)
    x = torch.randn(1, 3, 64, 64)
    context, attention = m.context(m.view_features(x))
    fused = m.fuse(context, attention, torch.randn(1, 5, 8, 8), (0, 32, 0, 32))
    assert torch.allclose(fused, F.interpolate(context, scale_factor=2, mode="bilinear", align_corners=False),
                          atol=1e-6)


def test_context_and_detail_logits_align_at_the_detail_crop():
    """A base whose logits are a function of the pixel position only (the encoder replaced by the input's
    own coordinates): the detail logits placed at the box equal the context's upsampled ones there."""
    m = hrda().eval()

    class Coordinates(nn.Module):  # 'features' = the image itself at stride 4 (a coordinate map)
        feature_info = None

        def forward(self, img):
            return [F.avg_pool2d(img, 4)]

    m.encoder = Coordinates()
    m.head = nn.Identity()
    m.decode = lambda feats: feats[0]
    h = w = 64
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    x = torch.stack([yy, xx, torch.zeros_like(yy)])[None]  # channels: row, column, 0
    m.train()
    for _ in range(5):
        box = m.detail_box(h, w)
        y1, y2, x1, x2 = box
        detail = m.decode(m.encode(x[:, :, y1:y2, x1:x2]))
        placed = m.fuse(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8), detail, box)
        # inside the box (away from the attention's blurred edge) the row/column channels are the
        # absolute coordinates of the full-resolution image: the crop landed where it was cut
        full = F.avg_pool2d(x, 4)
        sl = (slice(None), slice(0, 2), slice(y1 // 4 + 1, y2 // 4 - 1), slice(x1 // 4 + 1, x2 // 4 - 1))
        assert torch.allclose(placed[sl], full[sl], atol=1e-4), box


def test_detail_boxes_lie_on_the_grid_inside_the_image_and_reach_the_offsets_get_crop_bbox_reaches():
    m = hrda().train()
    assert m.divisible == 8  # output stride 4 / context scale 0.5
    torch.manual_seed(1)
    boxes = {m.detail_box(64, 96) for _ in range(400)}
    for y1, y2, x1, x2 in boxes:
        assert y1 % 8 == 0 and x1 % 8 == 0 and y2 - y1 == 32 and x2 - x1 == 32 and y2 <= 64 and x2 <= 96
    # official offsets: 0, 8, ... below (margin + 1) // 8 * 8: margins 32 and 64 -> 0..24 and 0..56
    assert {b[0] for b in boxes} == {0, 8, 16, 24} and {b[2] for b in boxes} == set(range(0, 64, 8))


def test_detail_loss_is_weighted_lambda_d_on_the_crop_of_the_label():
    m = hrda(detail_loss_weight=0.1).train()
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    calls = []

    def criterion(logits, box):
        target = label if box is None else label[:, box[0]:box[1], box[2]:box[3]]
        calls.append((tuple(logits.shape), box))
        return F.cross_entropy(logits, target)

    torch.manual_seed(3)
    loss = m.seg_loss(x, criterion)
    (fused_shape, none), (detail_shape, box) = calls
    assert none is None and fused_shape == (2, 5, 64, 64) and detail_shape == (2, 5, 32, 32)
    torch.manual_seed(3)
    views = m.encode_views(x)
    assert views.box == box
    fused, detail = m.decode_views(views)
    fused = F.interpolate(fused, size=(64, 64), mode="bilinear", align_corners=False)
    detail = F.interpolate(detail, size=(32, 32), mode="bilinear", align_corners=False)
    want = 0.9 * F.cross_entropy(fused, label) + 0.1 * F.cross_entropy(detail, label[:, box[0]:box[1], box[2]:box[3]])
    assert torch.allclose(loss, want, atol=1e-6)
    torch.manual_seed(3)
    assert torch.equal(m(x), fused)  # a training-mode forward is the same pass's fused logits


def test_inference_covers_the_input_in_windows_and_one_window_is_one_pass():
    m = hrda().eval()
    x = torch.randn(1, 3, 32, 32)  # the detail crop is the whole input: one window
    with torch.no_grad():
        assert torch.equal(m.detail_windows(x), m.decode(m.encode(x)))
        big = torch.randn(1, 3, 64, 96)
        out = m.detail_windows(big)
        assert out.shape == (1, 5, 16, 24)
        # windows of 32 with stride 16: the top-left cell is seen by exactly one window
        assert torch.allclose(out[..., :4, :4], m.decode(m.encode(big[..., :32, :32]))[..., :4, :4], atol=1e-5)
        state = torch.get_rng_state()
        a, b = m(big), m(big)
        assert torch.equal(torch.get_rng_state(), state)  # no random crop at inference
    assert torch.equal(a, b)


def test_sliding_window_evaluation_of_hrda_equals_whole_image_inference_where_one_window_covers_it():
    """The paper evaluates HRDA in 1024 windows at stride 512 over 2048x1024 (eval.mode slide); where the
    window covers the input, sliding-window evaluation is whole-image inference, to the bit."""
    from harness.engine.evaluation import slide_inference

    m = hrda().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        whole = m(x)
        assert torch.equal(slide_inference(m, x, crop=(64, 96), stride=(32, 48)), whole)
        assert torch.equal(slide_inference(m, x, crop=(128, 128)), whole)  # a window larger than the input
        # two windows (64x64 at stride 32): each is HRDA's own inference of its window, averaged
        left, right = m(x[..., :64]), m(x[..., 32:])
        slid = slide_inference(m, x, crop=(64, 64), stride=(32, 32))
        torch.testing.assert_close(slid[..., :32], left[..., :32])
        torch.testing.assert_close(slid[..., 32:64], (left[..., 32:] + right[..., :32]) / 2)
        torch.testing.assert_close(slid[..., 64:], right[..., 32:])


def test_param_groups_cover_every_parameter_once_with_the_attention_in_the_decoder():
    m = hrda()
    groups = m.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert {id(p) for p in m.attention.parameters()} <= {id(p) for p in groups["decoder"]}


@pytest.mark.parametrize("base", ["deeplabv2", "segformer"])
def test_other_bases_build_their_own_attention_head(base):
    backbone = "resnet18" if base == "deeplabv2" else "pvt_v2_b0"
    opts = {"aspp_dilations": (6, 12)} if base == "deeplabv2" else {"embed_dim": 16}
    m = create_segmentor("hrda", backbone=backbone, num_classes=5, base=base, base_options=opts,
                         detail_crop=(32, 32), attention_embed_dim=8).train()
    assert m.divisible == round(m.decoder_stride / 0.5)
    views = m.encode_views(torch.randn(1, 3, 64, 64))
    fused, detail = m.decode_views(views)
    assert fused.shape[-2:] == (64 // m.decoder_stride,) * 2 and detail.shape[-2:] == (32 // m.decoder_stride,) * 2


def test_bad_sizes_are_refused_with_what_is_needed():
    m = hrda().train()
    with pytest.raises(ValueError, match=r"HRDA input 24x64: needs at least the detail crop 32x32"):
        m(torch.randn(1, 3, 24, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        m(torch.randn(1, 3, 36, 64))
    with pytest.raises(ValueError, match="crop_coord_divisible=4 must be a multiple of"):
        hrda(crop_coord_divisible=4)


# --------------------------------------------------------------------------------------------------
# HRDA under the hosts (issue 18; the feature distance and the auxiliary tasks: tests/test_hrda_tasks.py)

def _smoke(smoke_config, out, *extra):
    return smoke_config(out, "eval.max_images=1", "selection.images=0", *extra, arch="hrda")


def test_dacs_on_hrda_trains_both_losses_of_a_training_pass_and_is_deterministic(smoke_config, tmp_path, monkeypatch):
    from harness.engine.training import train
    from harness.models.hrda import HRDA

    calls = []
    original = HRDA.views_loss
    monkeypatch.setattr(HRDA, "views_loss", lambda self, v, *rest: calls.append(v.box) or original(self, v, *rest))
    a = train(_smoke(smoke_config, tmp_path / "a"), progress=False)
    assert len(calls) == 8  # source and mixed image, 4 iterations, each with its detail crop drawn
    assert all(y2 - y1 == 32 and x2 - x1 == 32 for y1, y2, x1, x2 in calls)
    b = train(_smoke(smoke_config, tmp_path / "b"), progress=False)
    assert a["target_miou"] == b["target_miou"] and a["loss/uda"] == b["loss/uda"]


def test_a_detail_crop_larger_than_the_training_crop_is_a_config_error(smoke_config, tmp_path):
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match=r"detail_crop \[32, 32\] is larger than data.crop \[16, 64\]"):
        _smoke(smoke_config, tmp_path, "data.crop=[16,64]")

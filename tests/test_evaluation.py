"""The evaluation protocol: metrics against hand-computed confusion matrices (absent classes, ignore
pixels, SYNTHIA 16/13), sliding-window vs whole-image inference, and `evaluate` on dataset items."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.engine.evaluation import MEAN, STD, ConfusionMatrix, evaluate, slide_inference
from harness.labels import TRAIN_ID
from harness.models import create_segmentor

torch.set_num_threads(1)


def test_hand_computed_four_classes_with_ignore():
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 3], [2, 0, 1, 1]])  # the 3 sits on an ignore pixel: not a false positive
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    r = cm.compute()
    # class 0: TP 1, FP 1, FN 1; class 1: TP 3, FP 1; class 2: TP 1, FN 1; class 3: absent everywhere.
    assert r["iou"][:3] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(r["iou"][3])
    assert r["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)  # NaN excluded, not counted as 0 or 1
    assert r["pixel_acc"] == pytest.approx(5 / 7)  # 7 non-ignored pixels


def test_hand_computed_19_classes_and_synthia_protocols():
    road, wall, terrain, car, truck, pole = (TRAIN_ID[c] for c in ("road", "wall", "terrain", "car", "truck", "pole"))
    pairs = ([(road, road)] * 2 + [(wall, wall)] + [(road, terrain)]  # terrain predicted, never in GT: IoU 0
             + [(car, car)] * 3 + [(car, truck)] + [(255, pole)])      # pole only on an ignore pixel: NaN
    target = torch.tensor([t for t, _ in pairs])
    pred = torch.tensor([p for _, p in pairs])
    cm = ConfusionMatrix(19)
    cm.update(pred, target)
    r = cm.compute()
    expected = {road: 2 / 3, wall: 1.0, terrain: 0.0, car: 3 / 4, truck: 0.0}
    for c in range(19):
        if c in expected:
            assert r["iou"][c] == pytest.approx(expected[c]), c
        else:
            assert math.isnan(r["iou"][c]), c
    assert r["miou"] == pytest.approx((2 / 3 + 1 + 0 + 3 / 4 + 0) / 5)
    assert r["miou16"] == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)  # no terrain, truck, train
    assert r["miou13"] == pytest.approx((2 / 3 + 3 / 4) / 2)      # also no wall, fence, pole
    assert r["pixel_acc"] == pytest.approx(6 / 8)


def test_matches_a_per_class_loop_on_random_data_and_accumulates():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (4, 32, 48), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    target[target == 16] = 0  # "train" never in the ground truth ...
    logits = torch.randn(4, 19, 32, 48, generator=g)
    logits[:, 16] = -1e9  # ... nor predicted -> NaN
    logits[:, 14] += 0.5  # "truck" over-predicted
    pred = logits.argmax(1)
    whole = ConfusionMatrix(19)
    whole.update(logits, target)  # logits are accepted too
    parts = ConfusionMatrix(19)
    for i in range(4):
        parts.update(pred[i], target[i])
    assert torch.equal(whole.matrix, parts.matrix)
    r = parts.compute()
    valid = target != 255
    for c in range(19):
        tp = ((pred == c) & (target == c) & valid).sum().item()
        fp = ((pred == c) & (target != c) & valid).sum().item()
        fn = ((pred != c) & (target == c)).sum().item()
        if c == 16:
            assert tp + fp + fn == 0 and math.isnan(r["iou"][c])
        else:
            assert r["iou"][c] == pytest.approx(tp / (tp + fp + fn))
    assert r["miou"] == pytest.approx(sum(v for i, v in enumerate(r["iou"]) if i != 16) / 18)
    assert r["pixel_acc"] == pytest.approx(((pred == target) & valid).sum().item() / valid.sum().item())


def test_bad_input_and_empty_matrix():
    cm = ConfusionMatrix(19)
    r = cm.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"]) and all(math.isnan(v) for v in r["iou"])
    with pytest.raises(ValueError, match="label 19"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 19]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    assert cm.matrix.sum() == 0  # a rejected batch adds nothing


def test_matrix_lives_on_the_device_of_its_inputs():
    cm = ConfusionMatrix(19, device="meta")
    assert cm.matrix.device.type == "meta"
    cm = ConfusionMatrix(19)
    cm.update(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert cm.matrix.device == torch.device("cpu") and cm.matrix.dtype == torch.int64


# --------------------------------------------------------------------------------------------------
# inference

def test_sliding_window_equals_whole_image_when_the_crop_covers_it():
    torch.manual_seed(0)
    model = create_segmentor("daformer", backbone="pvt_v2_b0", embed_dim=16).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        whole = model(x)
        assert torch.equal(slide_inference(model, x, crop=(64, 96), stride=(32, 48)), whole)
        assert torch.equal(slide_inference(model, x, crop=(128, 128)), whole)
        # real windows differ from the whole image for a model with context
        assert not torch.allclose(slide_inference(model, x, crop=(32, 32), stride=(16, 16)), whole)


class Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): its logits do not depend on the window, so any tiling must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("crop,stride", [((32, 32), (16, 16)), ((24, 40), (20, 7)), ((64, 50), None)])
def test_overlapping_windows_are_averaged(crop, stride):
    torch.manual_seed(0)
    model = Pointwise().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(slide_inference(model, x, crop, stride), model(x))


def test_window_counts():
    """A model returning ones: the average is 1 everywhere only if every pixel is covered and counted."""

    class Ones(nn.Module):
        def forward(self, x):
            return x.new_ones(x.shape[0], 2, *x.shape[-2:])

    out = slide_inference(Ones(), torch.zeros(1, 3, 50, 70), crop=(32, 32), stride=(10, 24))
    assert torch.equal(out, torch.ones(1, 2, 50, 70))
    with pytest.raises(ValueError, match="stride"):
        slide_inference(Ones(), torch.zeros(1, 3, 50, 70), crop=(32, 32), stride=(40, 10))


# --------------------------------------------------------------------------------------------------
# evaluate() on dataset items

class RedChannelClassifier(nn.Module):
    """Predicts class round(R / 10) from the un-normalised red channel: exact only if `evaluate`
    normalises with the given mean/std (0-255 units)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        red = x[:, 0] * STD[0] + MEAN[0]
        cls = (red / 10).round().long().clamp(0, 18)
        return torch.nn.functional.one_hot(cls, 19).permute(0, 3, 1, 2).float() + self.dummy


def item(label, name, scale=1):
    label = torch.as_tensor(label, dtype=torch.int64)
    img_label = label[::scale, ::scale] if scale > 1 else label
    red = (img_label.clamp(max=18) * 10).to(torch.uint8)
    image = torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)])
    return {"image": image, "label": label, "name": name}


def test_evaluate_on_dataset_items():
    perfect = item([[0, 1], [2, 255]], "a")
    wrong = item([[0, 1], [2, 2]], "b")
    wrong["label"] = torch.tensor([[0, 1], [1, 2]])  # the model predicts 2 where the truth is 1
    model = RedChannelClassifier().train()
    r = evaluate(model, [perfect], "cpu")
    assert r["miou"] == 1.0 and r["pixel_acc"] == 1.0 and r["num_images"] == 1
    assert model.training  # mode restored
    r = evaluate(model, [perfect, wrong], "cpu")
    # class 0: 2/2; class 1: TP 2, FN 1 -> 2/3; class 2: TP 2, FP 1 -> 2/3
    assert r["iou"][:3] == pytest.approx([1, 2 / 3, 2 / 3]) and r["num_images"] == 2
    assert r["pixel_acc"] == pytest.approx(6 / 7)
    r = evaluate(model, [perfect, wrong], "cpu", max_images=1)
    assert r["num_images"] == 1 and r["miou"] == 1.0
    r = evaluate(model, [perfect, wrong], "cpu", mode="slide", crop=(1, 1), stride=(1, 1))
    assert r["iou"][:3] == pytest.approx([1, 2 / 3, 2 / 3])
    wrong_norm = evaluate(model, [perfect], "cpu", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert wrong_norm["miou"] < 1.0


def test_evaluate_batches_and_label_size():
    """Collated batches (B x ...) are split by max_images; logits are resized to a larger label."""
    a = item([[3, 3], [4, 4]], "a")
    b = item([[5, 5], [6, 6]], "b")
    batch = {"image": torch.stack([a["image"], b["image"]]), "label": torch.stack([a["label"], b["label"]])}
    r = evaluate(RedChannelClassifier(), [batch], "cpu", max_images=1)
    assert r["num_images"] == 1
    assert [i for i, v in enumerate(r["iou"]) if not math.isnan(v)] == [3, 4]
    big = item(torch.tensor([[7] * 4] * 2 + [[8] * 4] * 2), "big", scale=2)  # image 2x2, label 4x4
    assert big["image"].shape[-2:] == (2, 2) and big["label"].shape == (4, 4)
    r = evaluate(RedChannelClassifier(), [big], "cpu")
    assert r["iou"][7] == r["iou"][8] == r["miou"] == 1.0 and r["num_images"] == 1


def test_evaluate_rejects_slide_without_crop():
    with pytest.raises(ValueError, match="crop"):
        evaluate(RedChannelClassifier(), [item([[0]], "a")], "cpu", mode="slide")

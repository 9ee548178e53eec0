"""The pseudo-label margins of the image (`method.pseudo_image_margins`, HRDA's `crop_pseudo_margins`): the
target loader cuts and flips them with the training crop (`"pseudo_valid"`, harness/data/dataset.py), the
engine passes them to the host (`ctx.pseudo_valid`), and dacs sets the pseudo-weight of their pixels to 0:
a crop at the image's edge loses the part of the margins it holds, an interior crop nothing. Off by default,
leaving the config hashes and DAFormer's per-crop rows as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.env import offline

offline()

from conftest import tiny_segmentor  # noqa: E402

from harness.config import ConfigError, DatasetConfig, MethodConfig, validate_schema  # noqa: E402
from harness.data.dataset import SegDataset, build_dataset, margin_mask  # noqa: E402
from harness.data.io import DataError  # noqa: E402
from harness.data.layouts import Listing, Sample  # noqa: E402
from harness.engine.resolve import load_config  # noqa: E402
from methods.base import StepContext  # noqa: E402
from methods.dacs import DACS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
DAFORMER = REPO / "studies" / "configs" / "daformer.yaml"
HRDA_MARGINS = (30, 240, 30, 30)  # configs/hrda/gtaHR2csHR_hrda.py crop_pseudo_margins (top, bottom, left, right)


def expected(rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int], margins) -> torch.Tensor:
    """Whether each pixel, at image position (rows, cols), lies outside the image's margins: the official
    CityscapesDataset's valid_pseudo_mask, written from its definition."""
    (h, w), (top, bottom, left, right) = size, margins
    return (rows >= top) & (rows < h - bottom) & (cols >= left) & (cols < w - right)


# --------------------------------------------------------------------------------------------------
# the mask: HRDA's numbers on a 2048x1024 image, by hand

def test_a_crop_at_the_images_edge_gets_the_margins_it_holds_an_interior_crop_only_the_rows():
    size, crop = (1024, 2048), 1024
    rows, cols = torch.arange(crop)[:, None], torch.arange(crop)[None, :]
    left_edge = torch.from_numpy(margin_mask(size, HRDA_MARGINS, (0, crop, 0, crop)))
    # top 30 rows, bottom 240 rows, the image's first 30 columns = the crop's first 30
    assert torch.equal(left_edge, (rows >= 30) & (rows < 1024 - 240) & (cols >= 30))
    assert int((~left_edge).sum()) == crop * crop - (crop - 270) * (crop - 30)
    interior = torch.from_numpy(margin_mask(size, HRDA_MARGINS, (0, crop, 500, 500 + crop)))
    assert torch.equal(interior, ((rows >= 30) & (rows < 784)).expand(crop, crop))  # no column lost
    right_edge = torch.from_numpy(margin_mask(size, HRDA_MARGINS, (0, crop, 1024, 2048)))
    assert torch.equal(right_edge, (rows >= 30) & (rows < 784) & (cols < crop - 30))
    one_in = torch.from_numpy(margin_mask(size, HRDA_MARGINS, (0, crop, 10, 10 + crop)))
    assert torch.equal(one_in, (rows >= 30) & (rows < 784) & (cols >= 20))  # 20 of the 30 columns are in it
    # flipped with the image: the image's left margin is now on the crop's right
    flipped = torch.from_numpy(margin_mask(size, HRDA_MARGINS, (0, crop, 0, crop), flipped=True))
    assert torch.equal(flipped, left_edge.flip(1))
    # a window reaching past the image (padding) is never valid
    padded = margin_mask((8, 8), (0, 0, 0, 0), (0, 10, 0, 12))
    assert padded[:8, :8].all() and not padded[8:].any() and not padded[:, 8:].any()


def test_dacs_zeroes_exactly_the_masked_pixels_and_keeps_daformers_rows():
    weight = torch.rand(2, 64, 96) + 0.1
    valid = torch.from_numpy(np.stack([margin_mask((64, 200), (3, 5, 7, 2), (0, 64, 0, 96)),       # left edge
                                       margin_mask((64, 200), (3, 5, 7, 2), (0, 64, 50, 146))]))  # interior
    host = DACS(MethodConfig(pseudo_image_margins=(3, 5, 7, 2)), torch.nn.Conv2d(3, 19, 1))
    out = host.crop_pseudo_weight(weight.clone(), valid)
    assert torch.all(out[~valid] == 0) and torch.equal(out[valid], weight[valid])
    assert int((~valid[0]).sum()) == 64 * 96 - (64 - 8) * (96 - 7) and int((~valid[1]).sum()) == (3 + 5) * 96
    # without a mask nothing changes; DAFormer's per-crop rows are as before
    assert torch.equal(host.crop_pseudo_weight(weight.clone()), weight)
    rows = DACS(MethodConfig(pseudo_weight_ignore_top=15, pseudo_weight_ignore_bottom=20), torch.nn.Conv2d(3, 19, 1))
    out = rows.crop_pseudo_weight(weight.clone())
    assert torch.all(out[:, :15] == 0) and torch.all(out[:, -20:] == 0) and torch.equal(out[:, 15:-20], weight[:, 15:-20])


# --------------------------------------------------------------------------------------------------
# the loader: cut and flipped with the crop

def coordinate_listing(root: Path, size: tuple[int, int], n: int = 3) -> Listing:
    """Images whose pixels carry their own position (red = row, green = column, blue = the sample), so an
    item's crop and flip can be read off its pixels, whatever the loader did."""
    h, w = size
    samples = []
    for k in range(n):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = np.arange(h)[:, None], np.arange(w)[None, :], k
        Image.fromarray(rgb).save(root / f"{k}.png")
        Image.fromarray(np.zeros((h, w), np.uint8)).save(root / f"{k}_label.png")
        samples.append(Sample(root / f"{k}.png", root / f"{k}_label.png", str(k)))
    return Listing("coordinates", root, samples, lambda p: np.asarray(Image.open(p)))


def test_the_loaders_mask_is_the_images_margins_cut_and_flipped_with_the_crop(tmp_path):
    size, margins = (24, 40), (3, 5, 2, 4)
    listing = coordinate_listing(tmp_path, size)
    ds = SegDataset(listing, crop=(10, 12), flip=0.5, seed=0, pseudo_margins=margins)
    plain = SegDataset(listing, crop=(10, 12), flip=0.5, seed=0)
    seen = {"left edge": 0, "right edge": 0, "interior": 0, "flipped": 0}
    for epoch in range(25):
        ds.set_epoch(epoch), plain.set_epoch(epoch)
        for i in range(len(ds)):
            item, same = ds[i], plain[i]
            rows, cols = item["image"][0].long(), item["image"][1].long()
            valid = item["pseudo_valid"]
            assert valid.dtype == torch.bool and valid.shape == (10, 12)
            assert torch.equal(valid, expected(rows, cols, size, margins)), (epoch, i)
            # the margins change no crop: same pixels as the loader without them (the same random draws)
            assert torch.equal(item["image"], same["image"]) and "pseudo_valid" not in same
            seen["left edge"] += int(cols.min()) == 0
            seen["right edge"] += int(cols.max()) == size[1] - 1
            seen["interior"] += bool(valid[3:-5].all()) and margins[2] <= int(cols.min()) <= int(cols.max()) < 36
            seen["flipped"] += int(cols[0, 0]) > int(cols[0, -1])
    assert all(seen.values()), seen  # every kind of crop was checked


def test_the_synthetic_target_carries_the_mask_of_the_crops_position(synth_root):
    """The real dataset: each item's crop is found in its whole image by its pixels, and its mask is the
    image's margins at that position (mirrored when the item is flipped)."""
    margins = (4, 10, 30, 12)
    cfg = DatasetConfig(root=str(synth_root), domain="target")
    ds = build_dataset(cfg, crop=(32, 48), flip=0.5, seed=3, pseudo_margins=margins)
    whole = build_dataset(cfg)
    found = {False: 0, True: 0}  # items whose mask tells a flip from none
    for i in range(len(ds)):
        item, image = ds[i], whole[i]["image"]
        h, w = image.shape[-2:]
        for flipped in (False, True):
            crop = item["image"].flip(-1) if flipped else item["image"]
            hits = [(y, x) for y in range(h - 32 + 1) for x in range(w - 48 + 1)
                    if torch.equal(image[:, y:y + 32, x:x + 48], crop)]
            if len(hits) == 1:
                (y, x), = hits
                rows, cols = torch.arange(y, y + 32)[:, None], torch.arange(x, x + 48)[None, :]
                mask = expected(rows, cols, (h, w), margins)
                assert torch.equal(item["pseudo_valid"], mask.flip(-1) if flipped else mask), (i, y, x, flipped)
                found[flipped] += not torch.equal(mask, mask.flip(-1))
    assert found[False] and found[True], found


def test_margins_covering_the_image_are_refused_before_training(synth_root):
    cfg = DatasetConfig(root=str(synth_root), domain="target")
    with pytest.raises(DataError, match=r"data\.target: method\.pseudo_image_margins \(top, bottom, left, right\) "
                                        r"\[0, 0, 64, 64\] cover the whole 128x64 image .*left \+ right < 128"):
        build_dataset(cfg, crop=(32, 32), pseudo_margins=(0, 0, 64, 64)).check_crop("data.target")
    build_dataset(cfg, crop=(32, 32), pseudo_margins=(0, 0, 64, 63)).check_crop("data.target")


def test_a_study_refuses_margins_covering_the_image_before_ray_starts(smoke_config, tmp_path):
    from harness.errors import UsageError
    from harness.study.runner import check_data

    ok = smoke_config(tmp_path, "method.pseudo_image_margins=[0,0,64,63]")  # the test's images are 128x64
    check_data([ok], tmp_path)
    bad = smoke_config(tmp_path, "method.pseudo_image_margins=[0,0,64,64]")
    with pytest.raises(UsageError, match=r"^run: data\.target: method\.pseudo_image_margins .* cover the whole 128x64"):
        check_data([ok, bad], tmp_path)


# --------------------------------------------------------------------------------------------------
# the engine and the host

@pytest.mark.parametrize("mix", ["none", "classmix"])
def test_the_step_weights_the_masked_target_pixels_zero_in_the_mixed_loss(mix):
    torch.manual_seed(0)
    host = DACS(MethodConfig(pseudo_image_margins=(3, 5, 7, 2), pseudo_threshold=0.0, mix=mix), tiny_segmentor())
    g = torch.Generator().manual_seed(1)
    valid = torch.from_numpy(np.stack([margin_mask((16, 64), (3, 5, 7, 2), (0, 16, 0, 24)),       # left edge
                                       margin_mask((16, 64), (3, 5, 7, 2), (0, 16, 20, 44))]))  # interior
    ctx = StepContext(iteration=0, source_image=torch.randn(2, 3, 16, 24, generator=g),
                      source_label=torch.randint(0, 19, (2, 16, 24), generator=g),
                      target_image=torch.randn(2, 3, 16, 24, generator=g), student=host.model,
                      mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1) / 255, pseudo_valid=valid)
    host.step(ctx, lambda name, loss, retain_graph=False: loss.backward(retain_graph=retain_graph))
    assert ctx.stats["pseudo_weight"] == 1.0  # the confident share, before the margins
    assert torch.equal(ctx.pseudo_weight, valid.float())  # threshold 0: weight 1 but in the margins (tasks read it)
    mixed = ctx.extras["mixed_weight"]
    if mix == "none":
        assert torch.equal(mixed, valid.float())
    else:  # source pixels pasted over the target weigh 1; every pixel of weight 0 is a target margin pixel
        assert set(mixed.unique().tolist()) == {0.0, 1.0} and not valid[mixed == 0].any()


def test_the_engine_passes_each_target_crops_mask_to_the_host(smoke_config, tmp_path):
    from harness.engine.training import Trainer

    margins = [2, 3, 9, 5]
    cfg = smoke_config(tmp_path, f"method.pseudo_image_margins={margins}", "schedule.iterations=1",
                       "eval.interval=1", "data.batch_size=2")
    trainer = Trainer(cfg, progress=False)
    got = []
    crop = trainer.host.crop_pseudo_weight
    trainer.host.crop_pseudo_weight = lambda weight, valid=None: got.append(valid) or crop(weight, valid)
    trainer.run()
    want = torch.stack([trainer.target_stream[k]["pseudo_valid"] for k in range(2)])  # the step's target items
    assert len(got) == 1 and torch.equal(got[0], want) and not want.all()
    off = Trainer(smoke_config(tmp_path / "off", "schedule.iterations=1", "eval.interval=1"), progress=False)
    assert "pseudo_valid" not in off.target_stream[0]


# --------------------------------------------------------------------------------------------------
# the config

def test_the_option_is_off_by_default_keeps_the_hash_and_refuses_daformers_rows_beside_it():
    base = load_config(DAFORMER)
    assert base.method.pseudo_image_margins is None
    assert base.hash() == load_config(DAFORMER, ["method.pseudo_image_margins=null"]).hash()
    assert base.hash() != load_config(DAFORMER, ["method.pseudo_image_margins=[30,240,30,30]"]).hash()
    with pytest.raises(ConfigError, match=r"method\.pseudo_image_margins \[30, 240, 30, 30\] .* and "
                                          r"method\.pseudo_weight_ignore_top / _bottom \(15 / 120"):
        validate_schema({"data": {"crop": [512, 512]}, "method": {
            "pseudo_image_margins": [30, 240, 30, 30], "pseudo_weight_ignore_top": 15, "pseudo_weight_ignore_bottom": 120}})
    with pytest.raises(ConfigError, match=r"method\.pseudo_image_margins\.2: Input should be greater than or equal to 0"):
        validate_schema({"method": {"pseudo_image_margins": [30, 240, -1, 30]}})

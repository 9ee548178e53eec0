"""Dataset loaders against tiny fixtures written in each dataset's official layout, label mappings
(every raw id, including those that must become 255), the torch Dataset's contract, label conversion,
and every bad-input case (missing folders, unpaired files, unreadable/truncated PNGs, size mismatch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.config import ConfigError, DatasetConfig
from harness.data.convert import convert_dataset
from harness.data.dataset import build_dataset, dataset_hash
from harness.data.io import DataError, write_png
from harness.data.layouts import CITYSCAPES_ID_TO_TRAIN, SYNTHIA_ID_TO_TRAIN
from harness.labels import IGNORE_INDEX
from harness.registry import UnknownNameError

H, W = 16, 24


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def all_ids(n: int, h: int = H, w: int = W) -> np.ndarray:
    """An HxW label that contains every id 0..n-1 (then repeats)."""
    return (np.arange(h * w) % n).reshape(h, w)


def expected(ids: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    return np.vectorize(lambda i: mapping.get(int(i), IGNORE_INDEX))(ids).astype(np.uint8)


def write_gta5(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        write_png(root / "images" / f"{i + 1:05d}.png", rgb(i))
        write_png(root / "labels" / f"{i + 1:05d}.png", np.roll(all_ids(256), i).astype(np.uint8))
    return root


def write_synthia(root: Path, n: int = 2) -> Path:
    import cv2

    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    for i in range(n):
        write_png(root / "RGB" / f"{i:07d}.png", rgb(i))
        lab = np.zeros((H, W, 3), np.uint16)
        lab[..., 0] = np.roll(all_ids(24), i)           # class id: first (R) channel
        lab[..., 1] = 1000 + np.arange(H * W).reshape(H, W)  # instance ids: must be ignored
        lab[0, 0, 0] = 300                              # an id outside the table -> 255
        cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), lab[..., ::-1])  # OpenCV writes BGR
    return root


def write_cityscapes(root: Path, train_ids: bool = False) -> Path:
    for split, city, k in (("train", "aachen", 2), ("val", "frankfurt", 1)):
        for i in range(k):
            stem = f"{city}_{i:06d}_000019"
            img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            write_png(img_dir / f"{stem}_leftImg8bit.png", rgb(i))
            ids = np.roll(all_ids(34), i).astype(np.uint8)
            write_png(gt_dir / f"{stem}_gtFine_labelIds.png", ids)
            write_png(gt_dir / f"{stem}_gtFine_color.png", rgb(99))  # other gtFine files are ignored
            if train_ids:
                write_png(gt_dir / f"{stem}_gtFine_labelTrainIds.png", expected(ids, CITYSCAPES_ID_TO_TRAIN))
    return root


def write_acdc(root: Path) -> Path:
    for cond in ("fog", "night"):
        for split in ("train", "val"):
            seq = f"GOPR04{7 if cond == 'fog' else 8}5"
            img_dir, gt_dir = root / "rgb_anon" / cond / split / seq, root / "gt" / cond / split / seq
            img_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            stem = f"{seq}_frame_0000{41 if split == 'train' else 42}"
            write_png(img_dir / f"{stem}_rgb_anon.png", rgb(len(cond)))
            lab = (all_ids(20) % 20).astype(np.uint8)
            lab[lab == 19] = IGNORE_INDEX
            write_png(gt_dir / f"{stem}_gt_labelTrainIds.png", lab)
        (root / "rgb_anon" / cond / "train_ref" / "x").mkdir(parents=True)  # reference images: not a split
    return root


def cfg(name: str, root: Path, split: str = "train", domain: str | None = None, **kw) -> DatasetConfig:
    return DatasetConfig(name=name, root=str(root), split=split, domain=domain, **kw)


# --------------------------------------------------------------------------------------------------
# label mappings on every raw id


def test_gta5_maps_every_cityscapes_id(tmp_path):
    ds = build_dataset(cfg("gta5", write_gta5(tmp_path / "gta5")))
    assert len(ds) == 3 and ds.names == ["00001", "00002", "00003"]
    item = ds[1]
    import torch

    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, H, W)
    raw = np.roll(all_ids(256), 1)
    np.testing.assert_array_equal(item["label"].numpy(), expected(raw, CITYSCAPES_ID_TO_TRAIN))
    assert set(np.unique(item["label"].numpy())) == set(range(19)) | {IGNORE_INDEX}
    assert item["label"].dtype == torch.int64 and item["name"] == "00002"


def test_gta5_palette_labels_read_as_indices(tmp_path):
    """GTA5 ships labels as palette PNGs whose indices are the Cityscapes ids."""
    from PIL import Image

    root = write_gta5(tmp_path / "gta5", n=1)
    ids = all_ids(256).astype(np.uint8)
    im = Image.fromarray(ids).convert("P")  # index i = grey value i
    im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im.save(root / "labels" / "00001.png")
    assert Image.open(root / "labels" / "00001.png").mode == "P"
    lab = build_dataset(cfg("gta5", root))[0]["label"].numpy()
    np.testing.assert_array_equal(lab, expected(ids, CITYSCAPES_ID_TO_TRAIN))


def test_synthia_reads_the_class_from_the_first_channel_of_16bit_labels(tmp_path):
    ds = build_dataset(cfg("synthia", write_synthia(tmp_path / "synthia")))
    lab = ds[0]["label"].numpy()
    ids = all_ids(24)
    want = expected(ids, SYNTHIA_ID_TO_TRAIN)
    want[0, 0] = IGNORE_INDEX  # id 300
    np.testing.assert_array_equal(lab, want)
    assert not ({9, 14, 16} & set(np.unique(lab)))  # terrain, truck, train do not exist in SYNTHIA


def test_cityscapes_label_ids_and_train_ids(tmp_path):
    raw = build_dataset(cfg("cityscapes", write_cityscapes(tmp_path / "a"), split="train"))
    assert raw.names == ["train/aachen/aachen_000000_000019", "train/aachen/aachen_000001_000019"]
    np.testing.assert_array_equal(raw[0]["label"].numpy(), expected(all_ids(34), CITYSCAPES_ID_TO_TRAIN))
    val = build_dataset(cfg("cityscapes", tmp_path / "a", split="val"))
    assert len(val) == 1
    # with *_gtFine_labelTrainIds.png present (cityscapesscripts output) those are read directly
    tid = build_dataset(cfg("cityscapes", write_cityscapes(tmp_path / "b", train_ids=True)))
    assert tid.samples[0].label.name.endswith("_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(tid[1]["label"].numpy(), raw[1]["label"].numpy())


def test_acdc_conditions(tmp_path):
    root = write_acdc(tmp_path / "acdc")
    fog = build_dataset(cfg("acdc", root, domain="fog"))
    assert fog.names == ["fog/train/GOPR0475/GOPR0475_frame_000041"]
    both = build_dataset(cfg("acdc", root, split="val", domain=None))
    assert [n.split("/")[0] for n in both.names] == ["fog", "night"]
    lab = fog[0]["label"].numpy()
    assert lab.max() == IGNORE_INDEX and set(np.unique(lab)) == set(range(19)) | {IGNORE_INDEX}
    with pytest.raises(DataError, match="unknown condition.*'snwo'.*did you mean 'snow'"):
        build_dataset(cfg("acdc", root, domain="snwo"))


# --------------------------------------------------------------------------------------------------
# the Dataset contract


def test_crop_and_flip_are_a_function_of_seed_epoch_and_index(synth_root):
    c = DatasetConfig(root=str(synth_root), domain="source")
    a = build_dataset(c, crop=(32, 48), flip=0.5, seed=3)
    b = build_dataset(c, crop=(32, 48), flip=0.5, seed=3)
    first = [a[i]["label"] for i in range(6)]
    backwards = [b[i]["label"] for i in reversed(range(6))][::-1]
    assert all((x == y).all() for x, y in zip(first, backwards))
    assert tuple(first[0].shape) == (32, 48) and tuple(a[0]["image"].shape) == (3, 32, 48)
    a.set_epoch(1)
    assert any((a[i]["label"] != first[i]).any() for i in range(6))
    a.set_epoch(0)
    assert all((a[i]["label"] == first[i]).all() for i in range(6))
    other_seed = build_dataset(c, crop=(32, 48), flip=0.5, seed=4)
    assert any((other_seed[i]["label"] != first[i]).any() for i in range(6))


def test_dataloader_workers_give_the_same_batches(synth_root):
    import torch

    ds = build_dataset(DatasetConfig(root=str(synth_root), domain="target"), crop=(32, 32), flip=0.5, seed=1)
    ds.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, shuffle=False)
        return [(b["image"], b["label"]) for b in loader]

    for (i0, l0), (i2, l2) in zip(batches(0), batches(2)):
        assert torch.equal(i0, i2) and torch.equal(l0, l2)


def test_resize_and_padding(synth_root):
    c = DatasetConfig(root=str(synth_root), domain="target", split="val", resize=(64, 32))
    ds = build_dataset(c)
    item = ds[0]
    assert tuple(item["image"].shape) == (3, 32, 64) and tuple(item["label"].shape) == (32, 64)
    raw = build_dataset(DatasetConfig(root=str(synth_root), domain="target", split="val"))
    assert set(np.unique(item["label"].numpy())) <= set(np.unique(raw[0]["label"].numpy()))  # nearest
    big = build_dataset(DatasetConfig(root=str(synth_root), domain="source"), crop=(80, 140), seed=0)
    lab = big[0]["label"].numpy()
    assert lab.shape == (80, 140) and (lab[64:] == IGNORE_INDEX).all() and (lab[:, 128:] == IGNORE_INDEX).all()


def test_class_pixel_counts_match_the_labels(synth_root, tmp_path):
    ds = build_dataset(DatasetConfig(root=str(synth_root), domain="source"))
    counts = ds.class_pixel_counts()
    assert counts.shape == (16, 19) and counts.dtype == np.int64
    for i in (0, 7):
        lab = ds[i]["label"].numpy()
        np.testing.assert_array_equal(counts[i], np.bincount(lab[lab != 255].ravel(), minlength=19))
    # a real set without statistics counts by reading the labels
    gta = build_dataset(cfg("gta5", write_gta5(tmp_path / "gta5")))
    lab = gta[2]["label"].numpy()
    np.testing.assert_array_equal(gta.class_pixel_counts()[2], np.bincount(lab[lab != 255].ravel(), minlength=19))


def test_options_limit_and_unknown_names(synth_root):
    c = DatasetConfig(root=str(synth_root), domain="source", options={"limit": 5})
    assert len(build_dataset(c)) == 5
    with pytest.raises(ConfigError, match="options: limt: unknown key.*did you mean 'limit'"):
        build_dataset(DatasetConfig(root=str(synth_root), options={"limt": 5}))
    with pytest.raises(UnknownNameError, match="unknown dataset 'gta'.*did you mean 'gta5'"):
        build_dataset(DatasetConfig(name="gta", root=str(synth_root)))


def test_dataset_hash_is_stable_and_follows_the_content(synth_root, tmp_path):
    c = DatasetConfig(root=str(synth_root), domain="source")
    assert dataset_hash(c) == dataset_hash(c.model_copy())
    assert dataset_hash(c) != dataset_hash(DatasetConfig(root=str(synth_root), domain="target"))
    root = write_gta5(tmp_path / "gta5")
    before = dataset_hash(cfg("gta5", root))
    write_png(root / "labels" / "00002.png", np.zeros((H, W), np.uint8))
    assert dataset_hash(cfg("gta5", root)) != before


# --------------------------------------------------------------------------------------------------
# conversion (the `convert` stage)


def test_convert_writes_train_ids_and_statistics_that_loaders_use(tmp_path):
    root = write_gta5(tmp_path / "gta5")
    raw = build_dataset(cfg("gta5", root))
    raw_labels = [raw[i]["label"] for i in range(len(raw))]
    info = convert_dataset("gta5", root)
    out = tmp_path / "gta5_trainids"
    assert info["count"] == 3 and (out / "class_counts.csv").is_file() and (out / "labels" / "00001.png").is_file()
    conv = build_dataset(cfg("gta5", root))
    assert conv.listing.stats_file == out / "class_counts.csv"
    assert all((conv[i]["label"] == raw_labels[i]).all() for i in range(3))
    np.testing.assert_array_equal(conv.class_pixel_counts(), raw.class_pixel_counts())
    # cityscapes and acdc: all labelled splits/conditions in one go
    cs = convert_dataset("cityscapes", write_cityscapes(tmp_path / "cs"))
    assert cs["count"] == 3
    assert build_dataset(cfg("cityscapes", tmp_path / "cs", split="val")).listing.info["converted"]
    assert convert_dataset("acdc", write_acdc(tmp_path / "acdc"))["count"] == 4


def test_a_failed_conversion_leaves_the_previous_one_untouched(tmp_path):
    root = write_gta5(tmp_path / "gta5")
    convert_dataset("gta5", root)
    out = tmp_path / "gta5_trainids"
    before = (out / "class_counts.csv").read_bytes()
    data = (root / "labels" / "00003.png").read_bytes()
    (root / "labels" / "00003.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="00003.png"):
        convert_dataset("gta5", root)
    assert (out / "class_counts.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gta5", "gta5_trainids"]  # no temp folder left


# --------------------------------------------------------------------------------------------------
# bad input


def test_missing_dataset_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"gta5 dataset folder not found; expected layout: <root>/images/NNNNN.png"):
        build_dataset(cfg("gta5", tmp_path / "nope"))
    (tmp_path / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"gtFine/train folder not found.*_gtFine_labelIds.png"):
        build_dataset(cfg("cityscapes", tmp_path / "cs"))
    with pytest.raises(DataError, match=r"synthetic dataset folder not found.*udabench data synth"):
        build_dataset(DatasetConfig(root=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"SYNTHIA RGB folder not found.*16-bit"):
        build_dataset(cfg("synthia", tmp_path))


def test_image_without_label_and_label_without_image(tmp_path):
    root = write_gta5(tmp_path / "gta5")
    (root / "labels" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"images/00002.png: image has no label; expected .*labels/00002.png"):
        build_dataset(cfg("gta5", root))
    root = write_gta5(tmp_path / "gta5b")
    (root / "images" / "00003.png").unlink()
    with pytest.raises(DataError, match=r"labels/00003.png: label has no image; expected .*images/00003.png"):
        build_dataset(cfg("gta5", root))
    cs = write_cityscapes(tmp_path / "cs")
    next((cs / "gtFine" / "val").rglob("*_labelIds.png")).unlink()
    with pytest.raises(DataError, match=r"frankfurt_000000_000019_leftImg8bit.png: image has no label; "
                                        r"expected .*frankfurt_000000_000019_gtFine_labelIds.png"):
        build_dataset(cfg("cityscapes", cs, split="val"))


@pytest.mark.parametrize("which", ["images", "labels"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_png_names_the_file(tmp_path, which, damage):
    root = write_gta5(tmp_path / "gta5")
    path = root / which / "00002.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30] if damage == "truncated" else b"not a png at all")
    ds = build_dataset(cfg("gta5", root))
    ds[0]
    with pytest.raises(DataError, match=rf"{which}/00002.png: unreadable or truncated"):
        ds[1]


def test_truncated_16bit_synthia_label_names_the_file(tmp_path):
    root = write_synthia(tmp_path / "synthia")
    path = root / "GT" / "LABELS" / "0000001.png"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"GT/LABELS/0000001.png: unreadable or truncated"):
        build_dataset(cfg("synthia", root))[1]


def test_label_size_differs_from_image(tmp_path):
    root = write_gta5(tmp_path / "gta5")
    write_png(root / "labels" / "00002.png", np.full((H + 2, W), 7, np.uint8))
    ds = build_dataset(cfg("gta5", root))
    with pytest.raises(DataError, match=r"labels/00002.png: label size 24x18 differs from its image .*images/00002.png \(24x16\)"):
        ds[1]
    ok = build_dataset(cfg("gta5", root, options={"on_size_mismatch": "resize"}))
    assert tuple(ok[1]["label"].shape) == (H, W) and (ok[1]["label"] == 0).all()


def test_synthetic_split_missing_or_incomplete(synth_root, tmp_path):
    with pytest.raises(DataError, match=r"no synthetic split 'target/tset'.*did you mean 'target/test'|"
                                        r"no synthetic split 'target/tset'.*this dataset has"):
        build_dataset(DatasetConfig(root=str(synth_root), domain="target", split="tset"))
    import shutil

    copy = tmp_path / "syn"
    shutil.copytree(synth_root, copy)
    (copy / "target" / "val" / "labels" / "00004.png").unlink()
    with pytest.raises(DataError, match=r"target/val/images/00004.png: image has no label"):
        build_dataset(DatasetConfig(root=str(copy), domain="target", split="val"))

"""Where each dataset's files are and how its labels map to trainIds (no torch here).

A layout function turns a `DatasetConfig` into a `Listing`: the (image, label) pairs of one split
(and domain/condition), a label reader that returns trainIds (0-18, 255 ignore), and, if present,
the per-image class statistics file. Layouts are registered by dataset name in `LAYOUTS`:

| name       | expected layout under `root`                                                          |
|------------|----------------------------------------------------------------------------------------|
| synthetic  | manifest.json, <domain>/<split>/{images,labels}/NNNNN.png, <domain>/<split>/class_counts.csv |
| gta5       | images/NNNNN.png, labels/NNNNN.png (Cityscapes labelIds)                              |
| synthia    | RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png (16-bit, class id in the first channel)         |
| cityscapes | leftImg8bit/<split>/<city>/*_leftImg8bit.png, gtFine/<split>/<city>/*_gtFine_labelIds.png |
| acdc       | rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png, gt/<condition>/<split>/<seq>/*_gt_labelTrainIds.png |

Real sets may also have a converted copy (`udabench data convert`, the `convert` DVC stage):
`<converted>/labels/<sample name>.png` (trainIds) and `<converted>/class_counts.csv`; by default
`<root>_trainids`, used when its class_counts.csv exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.data.io import CLASS_COUNTS_FILE, DataError, read_label, read_label_first_channel16
from harness.labels import id_lut
from harness.registry import Registry, closest

# Cityscapes labelId -> trainId (GTA5 labels use the Cityscapes ids); every other id -> 255.
CITYSCAPES_ID_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
GTA5_ID_TO_TRAIN = CITYSCAPES_ID_TO_TRAIN
# SYNTHIA-RAND-CITYSCAPES class id (first channel of the 16-bit label) -> trainId.
SYNTHIA_ID_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17,
    11: 18,
}
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")

# Resize (width, height) of the DAFormer/DACS recipe (methods.md); ACDC as in DAFormer's ACDC configs.
RECIPE_RESIZE: dict[str, tuple[int, int]] = {
    "gta5": (1280, 720), "synthia": (1280, 760), "cityscapes": (1024, 512), "acdc": (960, 540),
}

LAYOUTS = Registry("dataset")


class LoaderOptions(BaseModel):
    """`DatasetConfig.options` understood by every loader."""

    model_config = ConfigDict(extra="forbid")

    converted: str | None = None   # folder of converted trainId labels; default <root>_trainids if complete
    on_size_mismatch: Literal["error", "resize"] = "error"  # label size != image size
    limit: int | None = Field(None, ge=1)  # use only the first N pairs (sorted by name)


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path
    name: str  # unique within the dataset (relative path without suffixes)


@dataclass
class Listing:
    dataset: str
    root: Path
    samples: list[Sample]
    read_label: Callable[[Path], np.ndarray]  # path -> HxW uint8 trainIds
    stats_file: Path | None = None  # class_counts.csv with one row per sample name
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the synthetic manifest's split entry


def parse_options(options: dict[str, Any], where: str = "options") -> LoaderOptions:
    from harness.config import ConfigError, format_validation_error

    try:
        return LoaderOptions.model_validate(options or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where, LoaderOptions)) from None


def _root(cfg, layout: str) -> Path:
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"{root}: {cfg.name} dataset folder not found; expected layout: {layout} "
                        f"(see datasets/README.md)")
    return root


def _require_dir(path: Path, what: str, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found; expected layout: {layout} (see datasets/README.md)")


def pair_files(images: dict[str, Path], labels: dict[str, Path],
               expected_label: Callable[[str], Path], expected_image: Callable[[str], Path]) -> list[Sample]:
    """Match images and labels by sample name; a file without its partner is an error naming both."""
    for name in sorted(images.keys() - labels.keys()):
        raise DataError(f"{images[name]}: image has no label; expected {expected_label(name)}")
    for name in sorted(labels.keys() - images.keys()):
        raise DataError(f"{labels[name]}: label has no image; expected {expected_image(name)}")
    return [Sample(images[n], labels[n], n) for n in sorted(images)]


def _strip(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) else None


def _collect(folder: Path, suffix: str, rel_to: Path, recursive: bool) -> dict[str, Path]:
    """name (path relative to `rel_to` without `suffix`) -> file, for files ending with `suffix`."""
    out: dict[str, Path] = {}
    it = folder.rglob("*") if recursive else folder.iterdir()
    for p in it:
        if p.is_file():
            stem = _strip(p.name, suffix)
            if stem is not None:
                rel = p.parent.relative_to(rel_to)
                out[(rel / stem).as_posix() if str(rel) != "." else stem] = p
    return out


def _lut_reader(mapping: dict[int, int], size: int = 256) -> Callable[[Path], np.ndarray]:
    lut = id_lut(mapping, size)

    def read(path: Path) -> np.ndarray:
        return read_label(path, lut)

    return read


def _train_id_reader(path: Path) -> np.ndarray:
    return read_label(path)


def _with_converted(listing: Listing, cfg, opts: LoaderOptions) -> Listing:
    """Use converted trainId labels (from `udabench data convert`) when they exist."""
    conv = Path(opts.converted) if opts.converted else Path(f"{Path(cfg.root)}_trainids")
    stats = conv / CLASS_COUNTS_FILE
    if not stats.is_file():
        if opts.converted:
            raise DataError(f"{stats}: converted labels not found (run `udabench data convert --dataset "
                            f"{cfg.name} --root {cfg.root} --out {conv}`)")
        return listing
    samples = []
    for s in listing.samples:
        label = conv / "labels" / f"{s.name}.png"
        if not label.is_file():
            raise DataError(f"{label}: converted label missing for {s.image}; re-run the convert stage")
        samples.append(Sample(s.image, label, s.name))
    return Listing(listing.dataset, listing.root, samples, _train_id_reader, stats,
                   {**listing.info, "converted": str(conv)})


# --------------------------------------------------------------------------------------------------


SYNTHETIC_LAYOUT = "<root>/manifest.json, <root>/<domain>/<split>/images/NNNNN.png and labels/NNNNN.png"


@LAYOUTS.register("synthetic")
def synthetic(cfg, opts: LoaderOptions | None = None) -> Listing:
    from harness.data.synthetic import read_manifest

    root = Path(cfg.root)
    manifest = read_manifest(root)
    key = f"{cfg.domain}/{cfg.split}"
    if key not in manifest.get("splits", {}):
        have = sorted(manifest.get("splits", {}))
        raise DataError(f"{root}: no synthetic split '{key}'{closest(key, have)}; this dataset has: "
                        f"{', '.join(have) or 'none'}")
    folder = root / cfg.domain / cfg.split
    _require_dir(folder / "images", "synthetic images", SYNTHETIC_LAYOUT)
    _require_dir(folder / "labels", "synthetic labels", SYNTHETIC_LAYOUT)
    images = _collect(folder / "images", ".png", folder / "images", False)
    labels = _collect(folder / "labels", ".png", folder / "labels", False)
    samples = pair_files(images, labels, lambda n: folder / "labels" / f"{n}.png",
                         lambda n: folder / "images" / f"{n}.png")
    info = manifest["splits"][key]
    if len(samples) != info["count"]:
        raise DataError(f"{folder}: {len(samples)} image/label pairs but the manifest lists {info['count']}; "
                        f"the dataset is incomplete (regenerate it)")
    return Listing("synthetic", root, samples, _train_id_reader, folder / CLASS_COUNTS_FILE,
                   {**info, "content_hash": info["content_hash"], "manifest_hash": manifest["content_hash"]})


GTA5_LAYOUT = "<root>/images/NNNNN.png and <root>/labels/NNNNN.png (Cityscapes labelIds)"


def _single_split(cfg, allowed=("train", "all")) -> None:
    if cfg.split not in allowed:
        raise DataError(f"{cfg.name}: split '{cfg.split}' does not exist; {cfg.name} is used whole as a "
                        f"source set, valid: {', '.join(allowed)}")


@LAYOUTS.register("gta5")
def gta5(cfg, opts: LoaderOptions | None = None) -> Listing:
    root = _root(cfg, GTA5_LAYOUT)
    _single_split(cfg)
    for sub in ("images", "labels"):
        _require_dir(root / sub, f"GTA5 {sub}", GTA5_LAYOUT)
    images = _collect(root / "images", ".png", root / "images", False)
    labels = _collect(root / "labels", ".png", root / "labels", False)
    samples = pair_files(images, labels, lambda n: root / "labels" / f"{n}.png",
                         lambda n: root / "images" / f"{n}.png")
    return Listing("gta5", root, samples, _lut_reader(GTA5_ID_TO_TRAIN))


SYNTHIA_LAYOUT = "<root>/RGB/NNNNNNN.png and <root>/GT/LABELS/NNNNNNN.png (16-bit, class id in channel 1)"


def _synthia_reader(path: Path) -> np.ndarray:
    return read_label_first_channel16(path, id_lut(SYNTHIA_ID_TO_TRAIN, 65536))


@LAYOUTS.register("synthia")
def synthia(cfg, opts: LoaderOptions | None = None) -> Listing:
    root = _root(cfg, SYNTHIA_LAYOUT)
    _single_split(cfg)
    _require_dir(root / "RGB", "SYNTHIA RGB", SYNTHIA_LAYOUT)
    _require_dir(root / "GT" / "LABELS", "SYNTHIA GT/LABELS", SYNTHIA_LAYOUT)
    images = _collect(root / "RGB", ".png", root / "RGB", False)
    labels = _collect(root / "GT" / "LABELS", ".png", root / "GT" / "LABELS", False)
    samples = pair_files(images, labels, lambda n: root / "GT" / "LABELS" / f"{n}.png",
                         lambda n: root / "RGB" / f"{n}.png")
    return Listing("synthia", root, samples, _synthia_reader, info={"protocols": ("16", "13")})


CITYSCAPES_LAYOUT = ("<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
                     "<root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png (or _gtFine_labelTrainIds.png)")


@LAYOUTS.register("cityscapes")
def cityscapes(cfg, opts: LoaderOptions | None = None) -> Listing:
    root = _root(cfg, CITYSCAPES_LAYOUT)
    img_dir, gt_dir = root / "leftImg8bit" / cfg.split, root / "gtFine" / cfg.split
    _require_dir(img_dir, f"Cityscapes leftImg8bit/{cfg.split}", CITYSCAPES_LAYOUT)
    _require_dir(gt_dir, f"Cityscapes gtFine/{cfg.split}", CITYSCAPES_LAYOUT)
    images = {f"{cfg.split}/{k}": v for k, v in _collect(img_dir, "_leftImg8bit.png", img_dir, True).items()}
    train_ids = {f"{cfg.split}/{k}": v for k, v in _collect(gt_dir, "_gtFine_labelTrainIds.png", gt_dir, True).items()}
    label_ids = {f"{cfg.split}/{k}": v for k, v in _collect(gt_dir, "_gtFine_labelIds.png", gt_dir, True).items()}
    use_train_ids = bool(train_ids) and train_ids.keys() >= images.keys()
    labels = train_ids if use_train_ids else label_ids

    def exp_label(n: str) -> Path:
        return root / "gtFine" / f"{n}_gtFine_labelIds.png"

    samples = pair_files(images, labels, exp_label, lambda n: root / "leftImg8bit" / f"{n}_leftImg8bit.png")
    reader = _train_id_reader if use_train_ids else _lut_reader(CITYSCAPES_ID_TO_TRAIN)
    return Listing("cityscapes", root, samples, reader)


ACDC_LAYOUT = ("<root>/rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png and "
               "<root>/gt/<condition>/<split>/<sequence>/<name>_gt_labelTrainIds.png (or _gt_labelIds.png)")


@LAYOUTS.register("acdc")
def acdc(cfg, opts: LoaderOptions | None = None) -> Listing:
    root = _root(cfg, ACDC_LAYOUT)
    cond = cfg.domain
    if cond in (None, "all"):
        conditions = [c for c in ACDC_CONDITIONS if (root / "rgb_anon" / c).is_dir()]
        if not conditions:
            raise DataError(f"{root}/rgb_anon: no condition folders ({', '.join(ACDC_CONDITIONS)}); "
                            f"expected layout: {ACDC_LAYOUT}")
    elif cond in ACDC_CONDITIONS:
        conditions = [cond]
    else:
        raise DataError(f"acdc: unknown condition (domain) '{cond}'{closest(cond, ACDC_CONDITIONS)}; "
                        f"valid: {', '.join(ACDC_CONDITIONS)} or 'all'")
    images: dict[str, Path] = {}
    train_ids: dict[str, Path] = {}
    label_ids: dict[str, Path] = {}
    for c in conditions:
        img_dir, gt_dir = root / "rgb_anon" / c / cfg.split, root / "gt" / c / cfg.split
        _require_dir(img_dir, f"ACDC rgb_anon/{c}/{cfg.split}", ACDC_LAYOUT)
        _require_dir(gt_dir, f"ACDC gt/{c}/{cfg.split}", ACDC_LAYOUT)
        pre = f"{c}/{cfg.split}/"
        images.update({pre + k: v for k, v in _collect(img_dir, "_rgb_anon.png", img_dir, True).items()})
        train_ids.update({pre + k: v for k, v in _collect(gt_dir, "_gt_labelTrainIds.png", gt_dir, True).items()})
        label_ids.update({pre + k: v for k, v in _collect(gt_dir, "_gt_labelIds.png", gt_dir, True).items()})
    use_train_ids = bool(train_ids) and train_ids.keys() >= images.keys()
    labels = train_ids if use_train_ids else label_ids
    samples = pair_files(images, labels, lambda n: root / "gt" / f"{n}_gt_labelTrainIds.png",
                         lambda n: root / "rgb_anon" / f"{n}_rgb_anon.png")
    reader = _train_id_reader if use_train_ids else _lut_reader(CITYSCAPES_ID_TO_TRAIN)
    return Listing("acdc", root, samples, reader, info={"conditions": conditions})


def listing_for(cfg, opts: LoaderOptions | None = None) -> Listing:
    """The files of a dataset config (with converted labels if available, and `limit` applied)."""
    opts = opts or parse_options(cfg.options)
    listing = LAYOUTS.get(cfg.name)(cfg, opts)
    if cfg.name != "synthetic":
        listing = _with_converted(listing, cfg, opts)
    if not listing.samples:
        raise DataError(f"{cfg.root}: {cfg.name} split '{cfg.split}'"
                        f"{f' ({cfg.domain})' if cfg.domain else ''} has no image/label pairs")
    if opts.limit is not None:
        listing.samples = listing.samples[: opts.limit]
    return listing


def converted_splits(name: str, root: Path) -> list[tuple[str | None, str]]:
    """(domain, split) pairs with labels that the convert stage processes for a real dataset."""
    if name in ("gta5", "synthia"):
        return [(None, "all")]
    if name == "cityscapes":
        return [(None, s) for s in ("train", "val") if (root / "gtFine" / s).is_dir()]
    if name == "acdc":
        return [(c, s) for c in ACDC_CONDITIONS for s in ("train", "val")
                if (root / "gt" / c / s).is_dir()]
    raise DataError(f"convert: '{name}' is not a real dataset with raw labels; valid: gta5, synthia, "
                    f"cityscapes, acdc")

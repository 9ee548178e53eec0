"""`SegDataset`: the torch Dataset every training and evaluation loop reads, for every dataset.

Items are `{"image": uint8 3xHxW, "label": int64 HxW trainIds (255 ignore), "name": str}`, optionally
resized (image bilinear, label nearest), randomly cropped and flipped. The random crop and flip of
item i are drawn from a generator seeded with (seed, epoch, i), so they do not depend on the worker
process or the order items are fetched in: call `set_epoch(e)` before creating each epoch's
iterator (a DataLoader with `persistent_workers=True` would keep the old epoch in its workers).

The paper recipe's crop rules draw more crops from that same generator: `cat_max_ratio` < 1 re-draws a
crop in which one class covers that share or more of the labelled pixels (mmseg `RandomCrop`, up to
CROP_ATTEMPTS more draws, the last one kept); `item(i, rare_class=c, min_class_pixels=n, sample=k)`
(rare-class sampling's re-crop, DAFormer `get_rare_class_sample`) re-draws the crop up to CROP_ATTEMPTS
more times until it holds more than n pixels of c, from a generator seeded with (seed, epoch, i, k).
`keep_ratio` resizes as mmseg's `Resize(keep_ratio=True)`; `resize_label=False` leaves the label at its
stored resolution (evaluation against full-resolution labels); `label_size` (width, height; uncropped sets)
resizes the label (nearest) to it whatever the image's size (`eval.label_size`: a model fed larger images
scored on the same labels).

`pseudo_margins` (top, bottom, left, right; HRDA's `crop_pseudo_margins`, `method.pseudo_image_margins`)
adds `"pseudo_valid"` to each item: bool HxW, False on the pixels of the item that lie in those margins of
the image as loaded (or in the crop's padding), cut and flipped with the image, as HRDA's CityscapesDataset
builds its `valid_pseudo_mask` before RandomCrop and RandomFlip: a crop at the image's left edge gets its
first `left` columns False, an interior crop none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.data.io import DataError, image_size, read_class_counts, read_rgb
from harness.data.layouts import Listing, LoaderOptions, listing_for, parse_options
from harness.labels import IGNORE_INDEX, NUM_CLASSES

CROP_ATTEMPTS = 10  # re-draws of a crop (mmseg RandomCrop's cat_max_ratio loop, DAFormer's RCS re-crop)


class SegDataset(torch.utils.data.Dataset):
    def __init__(self, listing: Listing, resize: tuple[int, int] | None = None,
                 crop: tuple[int, int] | None = None, flip: float = 0.0, seed: int = 0,
                 options: LoaderOptions | None = None, keep_ratio: bool = False, resize_label: bool = True,
                 cat_max_ratio: float = 1.0, pseudo_margins: tuple[int, int, int, int] | None = None,
                 label_size: tuple[int, int] | None = None) -> None:
        if crop is not None and (len(crop) != 2 or min(crop) < 1):
            raise ValueError(f"crop: expected (height, width) >= 1, got {crop!r}")
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ValueError(f"resize: expected (width, height) >= 1, got {resize!r}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip: expected a probability in [0, 1], got {flip}")
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio: expected a ratio in (0, 1], got {cat_max_ratio}")
        if pseudo_margins is not None and (len(pseudo_margins) != 4 or min(pseudo_margins) < 0):
            raise ValueError(f"pseudo_margins: expected (top, bottom, left, right) >= 0, got {pseudo_margins!r}")
        self.listing = listing
        self.samples = listing.samples
        self.resize = tuple(resize) if resize else None
        self.crop = tuple(crop) if crop else None
        self.flip = float(flip)
        self.seed = int(seed)
        self.keep_ratio = bool(keep_ratio)
        self.resize_label = bool(resize_label)
        self.cat_max_ratio = float(cat_max_ratio)
        self.pseudo_margins = tuple(int(m) for m in pseudo_margins) if pseudo_margins is not None else None
        if label_size is not None and (crop is not None or len(label_size) != 2 or min(label_size) < 1):
            raise ValueError(f"label_size: expected (width, height) >= 1 of an uncropped set, got {label_size!r}")
        self.label_size = tuple(label_size) if label_size is not None else None
        self.epoch = 0
        self.options = options or LoaderOptions()
        self._counts: np.ndarray | None = None

    # -- sampling state ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the random crops/flips of epoch `epoch` (deterministic per (seed, epoch, index))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    # -- items ------------------------------------------------------------------------------------
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (HxWx3 uint8) and trainId label (HxW uint8) of a sample, checked and resized."""
        s = self.samples[index]
        image = read_rgb(s.image)
        label = self.listing.read_label(s.label)
        if image.shape[:2] != label.shape:
            if self.options.on_size_mismatch == "resize":
                label = np.asarray(Image.fromarray(label).resize(image.shape[1::-1], Image.NEAREST))
            else:
                raise DataError(
                    f"{s.label}: label size {label.shape[1]}x{label.shape[0]} differs from its image "
                    f"{s.image} ({image.shape[1]}x{image.shape[0]}); set options.on_size_mismatch: resize "
                    f"to resize such labels")
        _check_label_values(label, s.label)
        size = self.resized(image.shape[1], image.shape[0])
        if size is not None and image.shape[1::-1] != size:
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            if self.resize_label and self.label_size is None:
                label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        if self.label_size is not None and label.shape[1::-1] != self.label_size:  # from the stored label
            label = np.asarray(Image.fromarray(label).resize(self.label_size, Image.NEAREST))
        return image, label

    def resized(self, width: int, height: int) -> tuple[int, int] | None:
        """The (width, height) an image of `width` x `height` is resized to (None: kept). With `keep_ratio`,
        mmcv's `rescale_size`: scale = min(long / long side, short / short side) of `resize`, rounded."""
        if self.resize is None or not self.keep_ratio:
            return self.resize
        scale = min(max(self.resize) / max(width, height), min(self.resize) / min(width, height))
        return int(width * scale + 0.5), int(height * scale + 0.5)

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, rare_class: int | None = None, min_class_pixels: float = 0,
             sample: int | None = None) -> dict:
        """Item `index`; with `rare_class`, the crop is re-drawn (up to CROP_ATTEMPTS times) until it holds
        more than `min_class_pixels` pixels of that class (the last draw kept), `sample` (the stream
        position) seeding the draws with the index and epoch."""
        image, label = self.load(index)
        size = image.shape[:2]  # the image as loaded
        window, flipped = (0, size[0], 0, size[1]), False  # the item's (y1, y2, x1, x2) in the image
        if self.crop is not None or self.flip > 0:
            key = [self.seed, self.epoch, index] + ([int(sample)] if sample is not None else [])
            rng = np.random.default_rng(key)
            if self.crop is not None:
                (ch, cw), (image, label) = self.crop, _pad(image, label, self.crop)
                for _ in range(1 + (CROP_ATTEMPTS if rare_class is not None else 0)):
                    y, x = _crop_corner(label, self.crop, rng, self.cat_max_ratio)
                    lab = label[y:y + ch, x:x + cw]
                    if rare_class is None or int(np.count_nonzero(lab == rare_class)) > min_class_pixels:
                        break
                image, label, window = image[y:y + ch, x:x + cw], lab, (y, y + ch, x, x + cw)
            if self.flip > 0 and rng.random() < self.flip:
                image, label, flipped = image[:, ::-1], label[:, ::-1], True
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "name": self.samples[index].name,
        }
        if self.pseudo_margins is not None:
            item["pseudo_valid"] = torch.from_numpy(margin_mask(size, self.pseudo_margins, window, flipped))
        return item

    # -- checks before work starts -----------------------------------------------------------------
    def size(self, index: int = 0) -> tuple[int, int]:
        """(width, height) of item `index` as loaded (after `resize`), from the file header."""
        if self.resize is not None and not self.keep_ratio:
            return self.resize
        size = image_size(self.samples[index].image)
        return self.resized(*size) or size

    def check_crop(self, where: str) -> None:
        """DataError unless the training crop fits the first image (a smaller image would be padded
        with ignore pixels, which a training crop never wants) and the pseudo-label margins leave some of it."""
        if not self.samples or (self.crop is None and self.pseudo_margins is None):
            return
        w, h = self.size(0)
        if self.pseudo_margins is not None:
            top, bottom, left, right = self.pseudo_margins
            if top + bottom >= h or left + right >= w:
                raise DataError(f"{where}: method.pseudo_image_margins (top, bottom, left, right) "
                                f"{list(self.pseudo_margins)} cover the whole {w}x{h} image "
                                f"{self.samples[0].image}; expected top + bottom < {h} and left + right < {w}")
        if self.crop is None:
            return
        if self.crop[0] > h or self.crop[1] > w:
            hint = "data.crop" if self.resize is None else "data.crop or the split's resize"
            size = f"{w}x{h}" + (" after resize" if self.resize is not None else "")
            raise DataError(f"{where}: crop (height, width) {self.crop} is larger than its images "
                            f"({self.samples[0].image}: {size}); reduce {hint}")

    def check_labels(self, max_pixels: int = 200_000_000) -> int:
        """Read labels (not images) until `max_pixels` label pixels were read, in order: each must have
        its image's size (unless options.on_size_mismatch: resize) and hold only trainIds or ignore.
        DataError naming the first bad file; returns how many labels were checked (all of a small set,
        the first part of a large one; the loader checks every label again when it reads it)."""
        pixels = 0
        for i, s in enumerate(self.samples):
            if pixels >= max_pixels:
                return i
            label = self.listing.read_label(s.label)
            pixels += label.size
            if self.options.on_size_mismatch != "resize":
                w, h = image_size(s.image)
                if (h, w) != label.shape:
                    raise DataError(
                        f"{s.label}: label size {label.shape[1]}x{label.shape[0]} differs from its image "
                        f"{s.image} ({w}x{h}); set options.on_size_mismatch: resize to resize such labels")
            _check_label_values(label, s.label)
        return len(self.samples)

    # -- statistics -------------------------------------------------------------------------------
    def class_pixel_counts(self) -> np.ndarray:
        """Pixels of each class per image, int64 [N, 19], at the stored resolution (for rare-class
        sampling). From the class statistics file when there is one, else computed once by reading
        every label."""
        if self._counts is None:
            self._counts = self._load_counts()
        return self._counts

    def _load_counts(self) -> np.ndarray:
        stats = self.listing.stats_file
        if stats is not None and Path(stats).is_file():
            names, counts = read_class_counts(stats)
            row = {n: i for i, n in enumerate(names)}
            missing = [s.name for s in self.samples if s.name not in row]
            if missing:
                raise DataError(f"{stats}: no class statistics for {missing[0]} ({len(missing)} images "
                                f"missing); re-run the convert/synth stage")
            return counts[[row[s.name] for s in self.samples]]
        out = np.zeros((len(self.samples), NUM_CLASSES), np.int64)
        for i, s in enumerate(self.samples):
            lab = self.listing.read_label(s.label)
            out[i] = np.bincount(lab.ravel(), minlength=256)[:NUM_CLASSES]
        return out


def _check_label_values(label: np.ndarray, path: Path) -> None:
    bad = (label >= NUM_CLASSES) & (label != IGNORE_INDEX)
    if bad.any():
        values = sorted({int(v) for v in np.unique(label[bad])})
        raise DataError(f"{path}: label values {', '.join(map(str, values[:5]))}{' ...' if len(values) > 5 else ''} "
                        f"are not trainIds (expected 0-{NUM_CLASSES - 1}, or {IGNORE_INDEX} for ignore); convert "
                        "the set's labels (`udabench data convert`)")


def margin_mask(size: tuple[int, int], margins: tuple[int, int, int, int], window: tuple[int, int, int, int],
                flipped: bool = False) -> np.ndarray:
    """Bool (y2 - y1) x (x2 - x1): the pixels of `window` (y1, y2, x1, x2) of an image of `size` (h, w) that
    lie inside the image and outside its `margins` (top, bottom, left, right), mirrored when the window was
    flipped (HRDA's `valid_pseudo_mask`, cut and flipped with the image; padding outside the image: False)."""
    (h, w), (top, bottom, left, right), (y1, y2, x1, x2) = size, margins, window
    rows, cols = np.arange(y1, y2), np.arange(x1, x2)
    mask = ((rows >= top) & (rows < h - bottom))[:, None] & ((cols >= left) & (cols < w - right))[None, :]
    return np.ascontiguousarray(mask[:, ::-1]) if flipped else mask


def _pad(image: np.ndarray, label: np.ndarray, crop: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The image and label padded at the bottom/right to at least the crop (image 0, label 255)."""
    (ch, cw), (h, w) = crop, label.shape
    if h >= ch and w >= cw:
        return image, label
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    return (np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0),
            np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX))


def _random_crop(image: np.ndarray, label: np.ndarray, crop: tuple[int, int],
                 rng: np.random.Generator, cat_max_ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A random (h, w) window; images smaller than the crop are padded (image 0, label 255). With
    `cat_max_ratio` < 1, re-drawn up to CROP_ATTEMPTS times until the crop holds two or more classes and
    none covers `cat_max_ratio` or more of its labelled pixels (mmseg RandomCrop; the last draw is kept)."""
    (ch, cw), (image, label) = crop, _pad(image, label, crop)
    y, x = _crop_corner(label, crop, rng, cat_max_ratio)
    return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def _crop_corner(label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator,
                 cat_max_ratio: float = 1.0) -> tuple[int, int]:
    """The top-left corner (y, x) of `_random_crop`'s window in a label at least as large as the crop."""
    (ch, cw), (h, w) = crop, label.shape
    for attempt in range(1 + (CROP_ATTEMPTS if cat_max_ratio < 1.0 else 0)):
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        if attempt == CROP_ATTEMPTS or cat_max_ratio >= 1.0:
            break
        counts = np.bincount(label[y:y + ch, x:x + cw].ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return y, x


def build_dataset(ds_cfg, crop: tuple[int, int] | None = None, flip: float = 0.0, seed: int = 0,
                  cat_max_ratio: float = 1.0, resize_label: bool = True,
                  pseudo_margins: tuple[int, int, int, int] | None = None,
                  label_size: tuple[int, int] | None = None) -> SegDataset:
    """The dataset of a `DatasetConfig` (name, root, domain, split, resize, keep_ratio, options); with
    `pseudo_margins`, its items carry `"pseudo_valid"` (module docstring)."""
    opts = parse_options(ds_cfg.options, f"dataset {ds_cfg.name}: options")
    listing = listing_for(ds_cfg, opts)
    return SegDataset(listing, resize=ds_cfg.resize, crop=crop, flip=flip, seed=seed, options=opts,
                      keep_ratio=getattr(ds_cfg, "keep_ratio", False), resize_label=resize_label,
                      cat_max_ratio=cat_max_ratio, pseudo_margins=pseudo_margins, label_size=label_size)


def dataset_hash(ds_cfg) -> str:
    """A short content hash of the data a config selects.

    Synthetic: from the manifest's per-split content hash (a hash of the decoded pixels). Real sets:
    from the sorted sample names with their image and label file sizes, plus the class statistics
    file when converted labels are used (cheap: no image is decoded).
    """
    opts = parse_options(ds_cfg.options, f"dataset {ds_cfg.name}: options")
    listing = listing_for(ds_cfg, opts)
    h = hashlib.sha256(f"{ds_cfg.name}|{ds_cfg.domain}|{ds_cfg.split}|{opts.limit}".encode())
    if ds_cfg.name == "synthetic":
        h.update(listing.info["content_hash"].encode())
    else:
        for s in listing.samples:
            h.update(f"{s.name}|{s.image.stat().st_size}|{s.label.stat().st_size}\n".encode())
        if listing.stats_file is not None:
            h.update(Path(listing.stats_file).read_bytes())
    return h.hexdigest()[:16]

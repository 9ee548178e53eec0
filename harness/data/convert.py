"""Convert a real dataset's raw labels to trainId PNGs and write per-image class statistics.

Output (written to a temporary folder, renamed at the end): `<out>/labels/<sample name>.png`
(uint8 trainIds, 255 ignore), `<out>/class_counts.csv` (pixels per class per image, for rare-class
sampling) and `<out>/info.json` (dataset, counts, per-class pixel frequencies). Every image/label
pair is checked on the way (readable, same size), so a conversion that finishes is a verified set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.io import (
    CLASS_COUNTS_FILE,
    DataError,
    atomic_dir,
    atomic_write_text,
    class_counts,
    image_size,
    write_class_counts,
    write_png,
)
from harness.data.layouts import LAYOUTS, LoaderOptions, converted_splits
from harness.labels import CLASSES, NUM_CLASSES


def default_output(root: str | Path) -> Path:
    return Path(f"{Path(root)}_trainids")


def convert_dataset(name: str, root: str | Path, out: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Convert every labelled split of dataset `name` under `root`; returns the info dict."""
    from harness.config import DatasetConfig

    root = Path(root)
    out = Path(out) if out is not None else default_output(root)
    layout = LAYOUTS.get(name)
    if name == "synthetic":
        raise DataError("convert: the synthetic set is generated with trainId labels; nothing to convert")
    if not root.is_dir():  # the layout's error names the expected layout
        layout(DatasetConfig(name=name, root=str(root), domain=None, split="train"), LoaderOptions())
    samples = []
    for domain, split in converted_splits(name, root):
        # always the raw labels (never an older conversion)
        listing = layout(DatasetConfig(name=name, root=str(root), domain=domain, split=split), LoaderOptions())
        samples.extend((s, listing.read_label) for s in listing.samples)
    if not samples:
        raise DataError(f"{root}: no labelled {name} images found")
    names = [s.name for s, _ in samples]
    counts = np.zeros((len(samples), NUM_CLASSES), np.int64)
    with atomic_dir(out) as tmp:
        for i, (s, read) in enumerate(samples):
            label = read(s.label)
            w, h = image_size(s.image)
            if (h, w) != label.shape:
                raise DataError(f"{s.label}: label size {label.shape[1]}x{label.shape[0]} differs from its "
                                f"image {s.image} ({w}x{h})")
            dst = tmp / "labels" / f"{s.name}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_png(dst, label)
            counts[i] = class_counts(label)
            if progress is not None:
                progress(i + 1, len(samples))
        write_class_counts(tmp / CLASS_COUNTS_FILE, names, counts)
        total = counts.sum(0)
        info = {
            "dataset": name, "root": str(root), "count": len(samples),
            "classes": list(CLASSES),
            "class_pixels": [int(x) for x in total],
            "class_pixel_frequency": [round(int(x) / max(1, int(total.sum())), 6) for x in total],
            "images_with_class": [int(x) for x in (counts > 0).sum(0)],
        }
        atomic_write_text(tmp / "info.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info

"""Datasets on disk: the random stream of each image, `render_index`, `generate` (the dataset folders,
per-split class statistics and the manifest with content hashes) and `read_manifest`."""

from __future__ import annotations

import hashlib
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
    write_class_counts,
    write_png,
)
from harness.data.synthetic.drawing import render
from harness.data.synthetic.params import GENERATOR_VERSION, SynthParams
from harness.data.synthetic.styles import DomainStyle, resolve_styles
from harness.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES

MANIFEST = "manifest.json"


def _stream_key(domain: str, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{domain}/{split}".encode()).digest()[:8], "little")


def image_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The random stream of image `index` of (domain, split): independent of every other image."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _stream_key(domain, split), index])))


def render_index(styles: dict[str, DomainStyle], params: SynthParams, domain: str, split: str,
                 index: int) -> tuple[np.ndarray, np.ndarray]:
    return render(styles[domain], image_rng(params.seed, domain, split, index), params.width, params.height)


def generate(params: SynthParams, out: str | Path,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Write the benchmark to `out` (atomically: a temporary folder renamed at the end) and return
    the manifest. Layout: out/<domain>/<split>/{images,labels}/NNNNN.png, class_counts.csv; out/manifest.json."""
    styles = resolve_styles(params.style, params.gap)
    out = Path(out)
    splits_info: dict[str, Any] = {}
    total = np.zeros(NUM_CLASSES, np.int64)
    n_images = 0
    with atomic_dir(out) as tmp:
        for domain, splits in params.splits.items():
            for split, n in splits.items():
                folder = tmp / domain / split
                (folder / "images").mkdir(parents=True)
                (folder / "labels").mkdir()
                counts = np.zeros((n, NUM_CLASSES), np.int64)
                names = [f"{i:05d}" for i in range(n)]
                h = hashlib.sha256()
                for i in range(n):
                    img, lab = render_index(styles, params, domain, split, i)
                    write_png(folder / "images" / f"{names[i]}.png", img)
                    write_png(folder / "labels" / f"{names[i]}.png", lab)
                    counts[i] = class_counts(lab)
                    h.update(img.tobytes())
                    h.update(lab.tobytes())
                    if progress is not None:
                        progress(f"{domain}/{split}", i + 1, n)
                write_class_counts(folder / CLASS_COUNTS_FILE, names, counts)
                pixels = counts.sum(0)
                total += pixels
                n_images += n
                splits_info[f"{domain}/{split}"] = {
                    "domain": domain, "split": split, "count": n,
                    "class_pixels": [int(x) for x in pixels],
                    "class_pixel_frequency": _freq(pixels),
                    "images_with_class": [int(x) for x in (counts > 0).sum(0)],
                    "content_hash": h.hexdigest(),
                    "style_hash": styles[domain].digest(),
                }
        manifest = {
            "generator": GENERATOR_VERSION,
            "params": params.model_dump(mode="json"),
            "image_size": {"width": params.width, "height": params.height},
            "classes": list(CLASSES),
            "ignore_index": IGNORE_INDEX,
            "num_images": n_images,
            "splits": splits_info,
            "class_pixel_frequency": _freq(total),
            "classes_present": int((total > 0).sum()),
        }
        manifest["content_hash"] = hashlib.sha256(
            json.dumps({k: manifest[k] for k in ("generator", "params", "splits")}, sort_keys=True).encode()
        ).hexdigest()
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _freq(pixels: np.ndarray) -> list[float]:
    s = int(pixels.sum())
    return [round(int(x) / s, 6) if s else 0.0 for x in pixels]


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(
            f"{root}: synthetic dataset folder not found; expected {root}/{MANIFEST} and "
            f"{root}/<domain>/<split>/images/NNNNN.png + labels/NNNNN.png (generate it with "
            f"`udabench data synth` or `dvc repro synth`; see datasets/README.md)")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: manifest missing; {root} is not a complete synthetic dataset "
                        f"(regenerate it with `udabench data synth`)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None

"""Datasets: the procedural synthetic benchmark and loaders for GTA5, SYNTHIA, Cityscapes and ACDC.

    from harness.data import build_dataset, dataset_hash
    ds = build_dataset(cfg.data.source, crop=cfg.data.crop, flip=cfg.data.flip, seed=cfg.seed)
    ds.set_epoch(epoch); item = ds[0]; ds.class_pixel_counts()

Modules: `synthetic` (generator), `layouts` (file layouts and label mappings), `dataset` (the torch
Dataset), `io` (checked reading, deterministic writing), `convert` (real labels -> trainIds),
`commands` (`udabench data ...`). Attributes are imported lazily so `import harness.data` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SegDataset": "harness.data.dataset",
    "build_dataset": "harness.data.dataset",
    "dataset_hash": "harness.data.dataset",
    "DataError": "harness.data.io",
    "LAYOUTS": "harness.data.layouts",
    "RECIPE_RESIZE": "harness.data.layouts",
    "SynthParams": "harness.data.synthetic",
    "DOMAINS": "harness.data.synthetic",
    "generate": "harness.data.synthetic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness.data' has no attribute {name!r}")

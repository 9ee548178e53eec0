"""Named scale presets: the same study or run config at a different size.

- smoke: seconds; what the tests run (tiny crops, a handful of iterations).
- demo:  minutes; what `make demo` runs.
- cpu:   the synthetic benchmark in full on two CPU cores (the calibrated domain gap).
- paper: real datasets, 40k iterations, 512 crops, a GPU (validated here, never run).

A preset is a config overlay (merged under `--set` overrides) plus the backbone and head options each
architecture uses at that scale, so a study that varies `model.arch` gets a sensible model at every
scale, and the Ray resources a study trial asks for by default (a study file may set its own).
"""

from __future__ import annotations

import copy
from typing import Any

from harness.config import ConfigError, deep_merge
from harness.registry import closest

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "resources": {"cpu": 1, "gpu": 0},
        "backbones": {"deeplabv2": "resnet18", "daformer": "pvt_v2_b0", "segformer": "pvt_v2_b0"},
        "arch_options": {"daformer": {"embed_dim": 64}, "segformer": {"embed_dim": 64}},
        "overlay": {
            "data": {"crop": [64, 64], "batch_size": 1},
            "schedule": {"iterations": 4, "warmup": 1},
            "eval": {"interval": 2, "max_images": 2},
            "log_interval": 1,
        },
    },
    "demo": {
        "resources": {"cpu": 1, "gpu": 0},
        "backbones": {"deeplabv2": "resnet18", "daformer": "pvt_v2_b0", "segformer": "pvt_v2_b0"},
        "arch_options": {"daformer": {"embed_dim": 64}, "segformer": {"embed_dim": 64}},
        "overlay": {
            "data": {"crop": [128, 128], "batch_size": 2},
            "schedule": {"iterations": 200, "warmup": 20},
            "optim": {"lr": 2e-4},
            "eval": {"interval": 100, "max_images": 100},
            "threads": 1,
        },
    },
    "cpu": {
        "resources": {"cpu": 1, "gpu": 0},
        "backbones": {"deeplabv2": "resnet18", "daformer": "pvt_v2_b0", "segformer": "pvt_v2_b0"},
        "arch_options": {"daformer": {"embed_dim": 64}, "segformer": {"embed_dim": 64}},
        "overlay": {
            "data": {"crop": [128, 128], "batch_size": 2},
            "schedule": {"iterations": 1000, "warmup": 50},
            "optim": {"lr": 2e-4},
            "eval": {"interval": 500},
            "threads": 1,
        },
    },
    "paper": {
        "resources": {"cpu": 4, "gpu": 1},
        "backbones": {"deeplabv2": "resnet101", "daformer": "pvt_v2_b5", "segformer": "pvt_v2_b5"},
        "overlay": {
            "data": {
                "source": {"name": "gta5", "root": "datasets/gta5", "domain": None, "resize": [1280, 720]},
                "target": {"name": "cityscapes", "root": "datasets/cityscapes", "domain": None,
                           "resize": [1024, 512]},
                "val": {"name": "cityscapes", "root": "datasets/cityscapes", "domain": None,
                        "split": "val", "resize": [1024, 512]},
                "crop": [512, 512], "batch_size": 2, "workers": 4,
            },
            "schedule": {"iterations": 40000, "warmup": 1500},
            "optim": {"lr": 6e-5},
            "eval": {"interval": 4000},
            "method": {"ema_alpha": 0.999},
        },
    },
}


def scale_overlay(name: str, arch: str | None = None) -> dict[str, Any]:
    """The config overlay of scale `name` (with the scale's backbone for `arch`, when given)."""
    if name not in SCALES:
        raise ConfigError(f"unknown scale '{name}'{closest(name, SCALES)}; valid: {', '.join(SCALES)}")
    scale = SCALES[name]
    overlay = copy.deepcopy(scale["overlay"])
    if arch is not None and arch in scale["backbones"]:
        overlay = deep_merge(overlay, {"model": {"backbone": scale["backbones"][arch]}})
    if arch is not None and arch in scale.get("arch_options", {}):
        overlay = deep_merge(overlay, {"model": {"options": scale["arch_options"][arch]}})
    return overlay

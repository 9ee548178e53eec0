"""Named scale presets: the same study or run config at a different size.

- smoke: seconds; what the tests run (tiny crops, a handful of iterations).
- demo:  minutes; what `make demo` runs.
- cpu:   the synthetic benchmark in full on two CPU cores (the calibrated domain gap).
- paper: real datasets, 40k iterations, 512 crops, a GPU (validated here, never run).

A preset is a config overlay (merged under the trial's axes and `--set` overrides) plus, per
architecture, the backbone and any recipe difference at that scale (`arch_overlay`), so a study that
varies `model.arch` gets a sensible model at every scale; and the Ray resources a study trial asks for
by default (a study file may set its own).

The small scales differ from the paper recipe where a short CPU schedule from random initialisation
needs it, and say so here: images at half the generated size (128x64, whole images), learning rate
1e-3 instead of 6e-5 (no ImageNet pre-training), EMA alpha 0.99 for every architecture (0.999 averages
over ~1000 iterations, longer than the schedule), rare-class sampling's pixel threshold scaled to the
image area, DAFormer/SegFormer heads 64 wide instead of 256/768, and DeepLab-v2's ResNet with GroupNorm
instead of BatchNorm, at output stride 16.

GroupNorm: the paper's ResNet-101 comes from ImageNet with its BatchNorm frozen, so it carries no
statistics of either domain. Trained from scratch, BatchNorm learns the source domain's statistics and
mis-normalises target features at test time: a source-only DeepLab-v2/ResNet-18 (cpu scale, data at
gap 0.65, seed 0) scored 11.9 mIoU with its running statistics and 20.4 with statistics re-estimated on
200 target images (AdaBN; sky 7.8 -> 64.8 IoU; `benchmarks/bench_bn.py`), and DACS's EMA teacher,
labelling target images with those statistics, taught the student wrong classes (sky fell to 0.2 IoU):
DACS never beat source-only in three calibration rounds. GroupNorm has no running statistics. Output
stride 16, not the paper's 8: at 8, ResNet-18's last two stages cost about three times as much (a
source-only step took 0.6 s instead of 0.2 s under the same load), too slow for a study to finish within the hour.

`cpu` runs 2000 iterations: after 1000, DAFormer's oracle was under 15 points above source-only (three
seeds each; datasets/README.md, "Calibrating the gap").
"""

from __future__ import annotations

import copy
from typing import Any

from harness.config import ConfigError, deep_merge
from harness.registry import closest

_SYNTH_HALF = {  # the synthetic benchmark (256x128) at half size, whole images
    "source": {"resize": [128, 64]}, "target": {"resize": [128, 64]}, "val": {"resize": [128, 64]},
    "crop": [64, 128], "batch_size": 2, "rcs_min_pixels": 375,
}
_SMALL_ARCHS = {
    "deeplabv2": {"model": {"backbone": "resnet18", "options": {"output_stride": 16, "norm": "group"}}},
    "daformer": {"model": {"backbone": "pvt_v2_b0", "options": {"embed_dim": 64}}},
    "segformer": {"model": {"backbone": "pvt_v2_b0", "options": {"embed_dim": 64}}},
}
_SHORT_SCHEDULE = {"optim": {"lr": 1e-3}, "method": {"ema_alpha": 0.99}, "threads": 1}

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "resources": {"cpu": 1, "gpu": 0},
        "arch_overlay": _SMALL_ARCHS,
        "overlay": {
            "data": {"crop": [64, 64], "batch_size": 1},
            "schedule": {"iterations": 4, "warmup": 1},
            "eval": {"interval": 2, "max_images": 2},
            "log_interval": 1,
        },
    },
    "demo": {
        "resources": {"cpu": 1, "gpu": 0},
        "arch_overlay": _SMALL_ARCHS,
        "overlay": deep_merge(_SHORT_SCHEDULE, {
            "data": _SYNTH_HALF,
            "schedule": {"iterations": 300, "warmup": 30},
            "eval": {"interval": 300, "max_images": 100},
        }),
    },
    "cpu": {
        "resources": {"cpu": 1, "gpu": 0},
        "arch_overlay": _SMALL_ARCHS,
        "overlay": deep_merge(_SHORT_SCHEDULE, {
            "data": _SYNTH_HALF,
            "schedule": {"iterations": 2000, "warmup": 200},  # 4-10 min a run (datasets/README.md)
            "eval": {"interval": 500},
        }),
    },
    "paper": {
        "resources": {"cpu": 4, "gpu": 1},
        "arch_overlay": {
            # DAFormer's and MIC's DeepLab-v2: mmseg ResNetV1c (= timm resnet101c) from resnet101_v1c,
            # ASPP (6, 12) (configs/_base_/models/deeplabv2red_r50-d8.py); MiT-B5 (= pvt_v2_b5) from
            # SegFormer's mit_b5.pth. Files: harness.models.weights.OFFICIAL; `udabench weights list`.
            "deeplabv2": {"model": {"backbone": "resnet101c", "pretrained": "pretrained/resnet101_v1c.pth",
                                    "options": {"aspp_dilations": [6, 12]}},
                          "method": {"ema_alpha": 0.99}},
            "daformer": {"model": {"backbone": "pvt_v2_b5", "pretrained": "pretrained/mit_b5.pth"},
                         "method": {"ema_alpha": 0.999}},
            "segformer": {"model": {"backbone": "pvt_v2_b5", "pretrained": "pretrained/mit_b5.pth"},
                          "method": {"ema_alpha": 0.999}},
        },
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
        },
    },
}


def scale_overlay(name: str, arch: str | None = None) -> dict[str, Any]:
    """The config overlay of scale `name` (with the scale's recipe for `arch`, when given)."""
    if name not in SCALES:
        raise ConfigError(f"unknown scale '{name}'{closest(name, SCALES)}; valid: {', '.join(SCALES)}")
    scale = SCALES[name]
    overlay = copy.deepcopy(scale["overlay"])
    if arch is not None and arch in scale["arch_overlay"]:
        overlay = deep_merge(overlay, scale["arch_overlay"][arch])
    return overlay

"""Named scale presets: the same study or run config at a different size.

- smoke: seconds; what the tests run (tiny crops, a handful of iterations).
- demo:  minutes; what `make demo` runs.
- cpu:   the synthetic benchmark in full on two CPU cores (the calibrated domain gap).
- paper: real datasets, 40k iterations, 512 crops, a GPU (validated here, never run); `hrda` at high
  resolution (GTA 2560x1440, Cityscapes 2048x1024, 1024 crops, sliding-window evaluation).
- paper-synthia: `paper` with SYNTHIA as the source (1280x760; `hrda`: 2560x1520) and the SYNTHIA
  16-class protocol.

A preset is a config overlay (merged under the trial's axes and `--set` overrides) plus, per
architecture, the backbone and any recipe difference at that scale (`arch_overlay`), so a study that
varies `model.arch` gets a sensible model at every scale; per auxiliary task, its recipe at that scale
(`aux_overlay`, merged only for the tasks a run enables; an architecture's own task recipe goes under
`method.aux` of its `arch_overlay`, merged the same way, after the scale's); and the Ray resources a study
trial asks for by default (a study file may set its own).

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
from collections.abc import Iterable
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
    # HRDA around the small DAFormer: a detail crop of half the short side (HRDA: 512 of 1024). Its teacher's
    # BatchNorm on batch statistics, as the official (and the paper scale): the head's running statistics
    # average HRDA's two views (context view and detail crops), and a teacher labelling the context view
    # with them cost HRDA + DACS 3-7 points at cpu (README, "HRDA at cpu").
    "hrda": {"model": {"backbone": "pvt_v2_b0", "options": {"base_options": {"embed_dim": 64},
                                                             "attention_embed_dim": 64, "detail_crop": [32, 32]}},
             "method": {"teacher_bn": "batch"}},
}
# HRDA at demo/cpu: the paper's regime in miniature. As the paper feeds HRDA images at twice DAFormer's
# resolution (Cityscapes 2048x1024 against 1024x512), HRDA reads the synthetic images at their generated
# 256x128 where the other architectures read 128x64: its context view (x0.5) sees what DAFormer sees, its
# detail crop (64, half the short side, as 512 of 1024) the finer pixels; whole-image crops, the rare-class
# pixel threshold x4 with the area, and the same 128x64 labels scored (eval.label_size).
_SMALL_ARCHS_HR = {**_SMALL_ARCHS, "hrda": deep_merge(_SMALL_ARCHS["hrda"], {
    "model": {"options": {"detail_crop": [64, 64]}},
    "data": {"source": {"resize": [256, 128]}, "target": {"resize": [256, 128]}, "val": {"resize": [256, 128]},
             "crop": [128, 256], "rcs_min_pixels": 1500},
    "eval": {"label_size": [128, 64]},
})}
_SHORT_SCHEDULE = {"optim": {"lr": 1e-3}, "method": {"ema_alpha": 0.99}, "threads": 1}
# MFM at the small scales: the Rebuilder as wide as the small encoders' deepest stage (pvt_v2_b0: 256; the
# released one is 512 wide, MiT-B5's deepest width) and fed the host's mixed image (as at paper scale,
# AUX_RECIPE). The released `base` Rebuilder on the small model holds 14.2M parameters against the model's
# 3.67M and cost 2.2x MIC's extra step time; `small` on the reused pass costs 0.75x (reports/benchmarks.md).
_SMALL_AUX = {"mfm": {"options": {"image": "mixed", "preset": "small"}}}

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "resources": {"cpu": 1, "gpu": 0},
        "arch_overlay": _SMALL_ARCHS,
        "aux_overlay": _SMALL_AUX,
        "overlay": {
            "data": {"crop": [64, 64], "batch_size": 1},
            "schedule": {"iterations": 4, "warmup": 1},
            "eval": {"interval": 2, "max_images": 2},
            "selection": {"images": 2},  # the label-free criteria on as few images as the evaluation
            "log_interval": 1,
        },
    },
    "demo": {
        "resources": {"cpu": 1, "gpu": 0},
        "arch_overlay": _SMALL_ARCHS_HR,
        "aux_overlay": _SMALL_AUX,
        "overlay": deep_merge(_SHORT_SCHEDULE, {
            "data": _SYNTH_HALF,
            "schedule": {"iterations": 300, "warmup": 30},
            "eval": {"interval": 300, "max_images": 100},
        }),
    },
    "cpu": {
        "resources": {"cpu": 1, "gpu": 0},
        "arch_overlay": _SMALL_ARCHS_HR,
        "aux_overlay": _SMALL_AUX,
        "overlay": deep_merge(_SHORT_SCHEDULE, {
            "data": _SYNTH_HALF,
            "schedule": {"iterations": 2000, "warmup": 200},  # 4-10 min a run (datasets/README.md)
            "eval": {"interval": 500},
            "log_interval": 20,  # 100 points a curve; the train/ logs cost < 1% of step time (README)
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
            "log_interval": 50,  # DAFormer's log_config interval=50 (configs/_base_/default_runtime.py)
        },
    },
}


# --- the DAFormer/MIC host recipe at paper scale (issue 17; README "Paper-scale recipe") -------------------
# Each value is the official one, from the file named beside it (lhoyer/DAFormer unless said otherwise).
# The schema defaults (harness/config.py) are udabench's behaviour before these options existed, which
# the small scales keep: their committed results stay reproducible bit for bit. tests/test_recipe.py
# holds the same table and fails when a value here drifts.
PAPER_RECIPE: dict[str, Any] = {
    "data": {
        # configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py: Resize(img_scale=...) keeps the aspect
        # ratio by default (GTA 1914x1052 -> 1280x704), in the train and the test pipelines
        "source": {"keep_ratio": True}, "target": {"keep_ratio": True}, "val": {"keep_ratio": True},
        "source_cat_max_ratio": 0.75,   # same file: RandomCrop(crop_size, cat_max_ratio=0.75) on the source
        "rcs_min_crop_ratio": 0.5,      # experiments.py setup_rcs / mmseg/datasets/uda_dataset.py
    },
    "method": {
        "teacher_bn": "batch",          # mmseg/models/uda/dacs.py: EMA model in train mode, _update_ema params
        "source_ce_mean": "all",        # mmseg/models/losses/cross_entropy_loss.py (weight_reduce_loss: mean)
        "classmix_classes": "batch",    # mmseg/models/utils/dacs_transforms.py get_class_masks
    },
    "eval": {"full_resolution_labels": True},  # mmseg/models/segmentors/encoder_decoder.py (rescale=True)
}
# DAFormer's recipe on the MiT architectures (experiments.py: 'dacs_a999_fdthings', rcs 0.01, plcrop;
# the 'mit' paramwise rule); DeepLab-v2 is DAFormer's DACS re-run ('dacs': no FD, no pseudo-label crop).
_MIT_RECIPE: dict[str, Any] = {
    # configs/_base_/models/daformer_sepaspp_mitb5.py -> mix_transformer.py mit_b5(drop_path_rate=0.1)
    "model": {"options": {"encoder_options": {"drop_path_rate": 0.1}}},
    "method": {
        "fd": {"weight": 0.005},        # configs/_base_/uda/dacs_a999_fdthings.py (classes, ratio: defaults)
        "pseudo_weight_ignore_top": 15, "pseudo_weight_ignore_bottom": 120,  # experiments.py (plcrop)
    },
    "optim": {"encoder_norm_decay_mult": 0.0},  # experiments.py: custom_keys norm=dict(decay_mult=0.)
}
SCALES["paper"]["overlay"] = deep_merge(SCALES["paper"]["overlay"], PAPER_RECIPE)
for _arch in ("daformer", "segformer"):
    SCALES["paper"]["arch_overlay"][_arch] = deep_merge(SCALES["paper"]["arch_overlay"][_arch], _MIT_RECIPE)

# --- HRDA at paper scale (issue 18): DAFormer's recipe around HRDA, at HRDA's resolution -----------------
# lhoyer/HRDA configs/hrda/gtaHR2csHR_hrda.py (experiments.py id 40) = DAFormer's model, uda and schedule
# files plus the values below; harness/official.py holds each with its file and tests/test_recipe.py the
# parity. Its data preset lives with the architecture, so a study varying model.arch gets HRDA rows at
# high resolution while the other architectures keep 1024x512.
_HRDA: dict[str, Any] = {
    "model": {"backbone": "pvt_v2_b5", "pretrained": "pretrained/mit_b5.pth", "options": {
        # configs/_base_/models/daformer_sepaspp_mitb5.py (the base) and its HRDA wrapping: scales [1, 0.5],
        # hr_crop_size 512, crop_coord_divisible 8, hr_loss_weight 0.1, attention_classwise, hr_slide_inference
        "base": "daformer",
        "base_options": {"embed_dim": 256, "fusion_dilations": [1, 6, 12, 18], "dropout": 0.1},
        "context_scale": 0.5, "detail_crop": [512, 512], "crop_coord_divisible": 8, "detail_loss_weight": 0.1,
        "attention_classwise": True, "attention_embed_dim": 256, "slide_detail": True}},
    "method": {
        "ema_alpha": 0.999,
        # configs/hrda/gtaHR2csHR_hrda.py crop_pseudo_margins [30, 240, 30, 30] (top, bottom, left, right) of
        # the 2048x1024 image, cut with the crop (mmseg/datasets/cityscapes.py); DAFormer's per-crop rows off
        "pseudo_image_margins": [30, 240, 30, 30], "pseudo_weight_ignore_top": 0, "pseudo_weight_ignore_bottom": 0,
        "aux": {"mim": {"options": {"block": 64}}},  # MIC(HRDA): lhoyer/MIC seg/experiments.py id 80
    },
    # configs/_base_/datasets/uda_gtaHR_to_cityscapesHR_1024x1024.py; RCS min_crop_ratio 2.0 (four times
    # the pixels of DAFormer's crops); test_cfg slide 1024 / stride 512 over the full-resolution image
    "data": {"source": {"resize": [2560, 1440]}, "target": {"resize": [2048, 1024]},
             "val": {"resize": [2048, 1024]}, "crop": [1024, 1024], "rcs_min_crop_ratio": 2.0},
    "eval": {"mode": "slide", "crop": [1024, 1024], "stride": [512, 512]},
}
SCALES["paper"]["arch_overlay"]["hrda"] = deep_merge(_MIT_RECIPE, _HRDA)

# --- the auxiliary tasks' recipes at paper scale (issue 17) ---------------------------------------------
# Merged into `method.aux.<task>` only for the tasks a run enables (`scale_overlay(..., aux=...)`): a scale
# never enables a task. `contrastive` is SePiCo's ProtoCL (BIT-DA/SePiCo, experiments.py id 6); the task's
# other values (proj_dim 512, temperature 100, min_purity 0.75) are its defaults. methods/contrastive.py
# lists each value with its official file; tests/test_recipe.py holds them and fails on a drift.
AUX_RECIPE: dict[str, dict[str, Any]] = {
    # MFM's training integration is not released: the host's ClassMix image (its mixed label and weight),
    # as the released Rebuilder's comment "Remove the Source Feature in Mixture" reads, reusing the host's
    # encoder pass of it. It keeps MFM's extra cost under MIC's: +376 GFLOP a step against MIC's +697 with
    # MiT-B5 at 512 (with the clean target image: +731; benchmarks/bench_aux_flops.py). methods/mfm.py.
    "mfm": {"options": {"image": "mixed"}},
    "contrastive": {"options": {
        "loss_start": 3000,     # experiments.py start_distribution_iter = 3000 (prototypes from iteration 0)
        "head": "sepico",       # experiments.py num_convs = 2; mmseg/models/decode_heads/proj_head.py
        "ema_alpha": 0.999,     # configs/_base_/uda/sepico.py alpha=0.999 (the EMA model, head included)
        "ema_bn": "batch",      # mmseg/models/uda/sepico.py: EMA model in train mode; _update_ema: parameters
        "reg_weight": 1.0,      # experiments.py id 6: use_reg = True, reg_relative_weight = 1.0
        "source_aug": True,     # configs/_base_/uda/sepico.py enable_strong_aug=True; sepico.py
    }},
}
SCALES["paper"]["aux_overlay"] = AUX_RECIPE

# SYNTHIA -> Cityscapes: the paper scale with SYNTHIA as the source (DAFormer
# configs/_base_/datasets/uda_synthia_to_cityscapes_512x512.py: Resize (1280, 760), otherwise identical) and
# the 16-class protocol. A scale of its own, so every study and run config runs on it unchanged
# (`--scale paper-synthia`); it shares the paper scale's per-architecture recipe and weights, but for HRDA's
# SYNTHIA at high resolution (HRDA configs/_base_/datasets/uda_synthiaHR_to_cityscapesHR_1024x1024.py).
SCALES["paper-synthia"] = {
    "resources": SCALES["paper"]["resources"],
    "arch_overlay": {**SCALES["paper"]["arch_overlay"], "hrda": deep_merge(
        SCALES["paper"]["arch_overlay"]["hrda"], {"data": {"source": {"resize": [2560, 1520]}}})},
    "aux_overlay": SCALES["paper"]["aux_overlay"],
    "overlay": deep_merge(SCALES["paper"]["overlay"], {
        "data": {"source": {"name": "synthia", "root": "datasets/synthia", "resize": [1280, 760]}},
        "eval": {"protocol": "16"},
    }),
}


def scale_overlay(name: str, arch: str | None = None, aux: Iterable[str] = ()) -> dict[str, Any]:
    """The config overlay of scale `name` (with the scale's recipe for `arch`, when given, and for each
    auxiliary task named in `aux`, the tasks the run enables: `raw_aux`)."""
    if name not in SCALES:
        raise ConfigError(f"unknown scale '{name}'{closest(name, SCALES)}; valid: {', '.join(SCALES)}")
    scale = SCALES[name]
    overlay = copy.deepcopy(scale["overlay"])
    arch_tasks: dict[str, Any] = {}
    if arch is not None and arch in scale["arch_overlay"]:
        arch_overlay = copy.deepcopy(scale["arch_overlay"][arch])
        arch_tasks = arch_overlay.get("method", {}).pop("aux", {})  # task recipes: only for enabled tasks
        overlay = deep_merge(overlay, arch_overlay)
    for recipes in (scale.get("aux_overlay", {}), arch_tasks):
        tasks = {t: recipes[t] for t in aux if t in recipes}
        if tasks:
            overlay = deep_merge(overlay, {"method": {"aux": tasks}})
    return overlay


def raw_aux(data: Any) -> list[str]:
    """The auxiliary tasks a raw (not yet validated) config enables (`method.aux` keys); [] when the
    config is malformed there (validation names the problem later)."""
    method = data.get("method") if isinstance(data, dict) else None
    aux = method.get("aux") if isinstance(method, dict) else None
    return [k for k in aux if isinstance(k, str)] if isinstance(aux, dict) else []

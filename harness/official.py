"""The published hosts' official recipes, value by value, each beside the official file it comes from.

The one place for the official values (issue 17). `harness.report.recipe` puts each beside the value
udabench resolves for the same host at `--scale paper` (`udabench recipe`, reports/recipe_parity.md),
and tests/test_recipe.py fails when a paper-scale value drifts from its official one without a named
difference. Read from the official code (lhoyer/DAFormer e6f6e04, lhoyer/MIC 2f932a9 `seg/`,
lhoyer/HRDA c370b5b, BIT-DA/SePiCo bce38ed); paths are relative to the code root (`Host.root`) of the host
whose row it is.

A host built on another (`Host.base`: MIC(DAFormer) and HRDA on DAFormer, MIC(HRDA) on HRDA) inherits the
base's rows, each still citing the base's repository, and lists only its own: a row of its own replaces the
base's row of the same path, and `Host.without` drops base rows that do not apply (DAFormer's head options,
which HRDA holds under `model.options.base_options`).

Values are in udabench's terms (`data.crop` is (height, width), `method.color_jitter_p` the probability
of applying the jitter, ...); the source says how the official file writes it. A row whose udabench
value may differ names the difference in `differs` (why udabench differs, shown only when it does); a
row without one must be equal at paper scale. `path` is a config path of the resolved config with the
defaults of the architecture's and the auxiliary tasks' options filled in, `study.seeds` (the seeds of
the host's study), `probe:<name>` (a property read from the code, `harness.report.recipe.PROBES`), or
None (udabench has no such option).

`NOT_RECIPE` lists the config fields that are not part of a recipe (where files are, how fast it runs)
and `INERT` those that do nothing while a switch is off, so that a field of a host's resolved config that is
in none of them and has no row fails a test (`harness.report.recipe.uncovered`): a new recipe option gets
its row here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.config import FD_THING_CLASSES


@dataclass(frozen=True)
class Published:
    """A published mIoU a host should reach, and where it is stated."""

    miou: float
    protocol: str   # "19" or "16" classes
    source: str
    checked: bool   # read here in the official repository; False: quoted, not checked against the paper


@dataclass(frozen=True)
class Host:
    """A published host, the official experiment it is, and the study trial that runs it in udabench."""

    name: str
    title: str
    repo: str
    root: str       # the code's folder in `repo` (MIC's segmentation code is under seg/)
    experiment: str
    study: str      # study file, relative to the project root
    point: dict[str, Any]
    published: dict[str, Published] = field(default_factory=dict)  # scale -> number
    notes: tuple[str, ...] = ()
    scales: tuple[str, ...] = ("paper",)  # the scales with an official run (a parity table)
    base: str | None = None               # the host whose rows this one inherits
    without: tuple[str, ...] = ()         # paths of the base's rows that do not apply


@dataclass(frozen=True)
class Official:
    """One recipe item of some hosts: its official value and file, and any named difference."""

    path: str | None
    what: str
    value: Any
    source: str
    hosts: tuple[str, ...]
    differs: str = ""          # why udabench's value differs, when it does; "" = it must not
    scale: str | None = None   # only at this scale (overrides the row of the same path and host)
    ours: str = ""             # path None: what udabench does instead, in words


DLV2, DAFORMER, MIC, SEPICO = "dacs-deeplabv2", "daformer", "mic-daformer", "sepico-daformer"
HRDA, MIC_HRDA = "hrda", "mic-hrda"
_DAF = (DLV2, DAFORMER)   # the DAFormer code base (MIC, HRDA: inherited through Host.base)
_MIT = (DAFORMER,)        # DAFormer's recipe on MiT-B5

HOSTS: dict[str, Host] = {h.name: h for h in (
    Host(DLV2, "DACS on DeepLab-v2 (DAFormer's re-run)", "lhoyer/DAFormer", "",
         "experiments.py id 1: ('dlv2red', 'r101v1c') with uda 'dacs', seeds 0, 1, 2",
         "studies/main.yaml", {"arch": "deeplabv2", "aux": "none", "seed": 0},
         {"paper": Published(54.2, "19", "DAFormer paper (CVPR 2022) Table 1, DACS re-run on DeepLab-v2 "
                             "(as quoted by ../shared/reference/paper-scale.md P1-8)", False)},
         ("DACS's own 52.1 (GTA) / 48.3 (SYNTHIA, 16 classes) is another recipe (COCO weights, SGD, 250k "
          "iterations; vikolss/DACS); udabench runs DAFormer's re-run of it.",
          "No official SYNTHIA -> Cityscapes run of this host: experiments.py id 1 is GTA -> Cityscapes only.")),
    Host(DAFORMER, "DAFormer", "lhoyer/DAFormer", "",
         "configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py (experiments.py "
         "id 6; SYNTHIA: id 7), seeds 0, 1, 2",
         "studies/main.yaml", {"arch": "daformer", "aux": "none", "seed": 0},
         {"paper": Published(68.3, "19", "lhoyer/DAFormer README.md (GTA->CS(val))", True),
          "paper-synthia": Published(60.9, "16", "lhoyer/DAFormer README.md (Synthia->CS(val))", True)},
         scales=("paper", "paper-synthia")),
    Host(MIC, "MIC(DAFormer)", "lhoyer/MIC", "seg/",
         "experiments.py id 81: ('daformer_sepaspp', 'mitb5', uda_daformer), mask_mode 'separatetrgaug', "
         "seeds 0, 1, 2",
         "studies/aux_tasks.yaml", {"task": "mic", "seed": 0},
         {"paper": Published(70.6, "19", "MIC paper (CVPR 2023) Table 1, DAFormer + MIC (as quoted by issue 17 "
                             "and ../shared/reference/paper-scale.md P1-11)", False)},
         ("No official SYNTHIA -> Cityscapes run of MIC(DAFormer): experiments.py id 81 is GTA -> Cityscapes "
          "only (SYNTHIA is run with HRDA, id 80).",), base=DAFORMER),
    Host(HRDA, "HRDA(DAFormer)", "lhoyer/HRDA", "",
         "experiments.py id 40: ('hrda1-512-0.1_daformer_sepaspp', 'mitb5'), gtaHR -> cityscapesHR at 1024x1024, "
         "uda 'dacs_a999_fdthings', rcs 0.01 / 2.0, plcrop 'v2', slide inference, seeds 0, 1, 2 "
         "(configs/hrda/gtaHR2csHR_hrda.py is its seed 1, annotated; SYNTHIA: synthiaHR)",
         "studies/main.yaml", {"arch": "hrda", "aux": "none", "seed": 0},
         {"paper": Published(73.8, "19", "lhoyer/HRDA README.md (GTA→CS(val))", True),
          "paper-synthia": Published(65.8, "16", "lhoyer/HRDA README.md (Synthia→CS(val))", True)},
         ("HRDA is DAFormer's recipe (rows from lhoyer/DAFormer) around the multi-resolution model, at twice "
          "the resolution; the rows from lhoyer/HRDA are its own.",),
         scales=("paper", "paper-synthia"), base=DAFORMER,
         without=("model.options.embed_dim", "model.options.fusion_dilations", "model.options.dropout")),
    Host(MIC_HRDA, "MIC(HRDA)", "lhoyer/MIC", "seg/",
         "experiments.py id 80: ('hrda1-512-0.1_daformer_sepaspp', 'mitb5'), gtaHR / synthiaHR -> cityscapesHR, "
         "mask_mode 'separatetrgaug', block 64, ratio 0.7, seeds 0, 1, 2 (configs/mic/gtaHR2csHR_mic_hrda.py is "
         "its seed 2, annotated)",
         "studies/main.yaml", {"arch": "hrda", "aux": "mim", "seed": 0},
         {"paper": Published(75.9, "19", "lhoyer/MIC README.md (75.9 mIoU on GTA→Cityscapes)", True),
          "paper-synthia": Published(67.3, "16", "MIC paper (CVPR 2023), as quoted by ../shared/reference/"
                                     "methods.md section 5 (lhoyer/MIC's READMEs give no SYNTHIA number)", False)},
         ("MIC(HRDA) is HRDA's recipe (rows from lhoyer/HRDA and lhoyer/DAFormer) with MIC's masked-image "
          "task; the rows from lhoyer/MIC are its own.",),
         scales=("paper", "paper-synthia"), base=HRDA),
    Host(SEPICO, "SePiCo ProtoCL(DAFormer)", "BIT-DA/SePiCo", "",
         "experiments.py id 6: ProtoCL, ('daformer_sepaspp_proj', 'mitb5'), all-stage fusion, seed 76",
         "studies/aux_tasks.yaml", {"task": "contrastive", "seed": 0},
         {"paper": Published(68.5, "19", "BIT-DA/SePiCo README.md, Model Zoo (sepico_protocl_gta2city_daformer.pth)",
                             True),
          "paper-synthia": Published(62.9, "16", "BIT-DA/SePiCo README.md, Model Zoo "
                                     "(sepico_protocl_syn2city_daformer.pth)", True)},
         ("udabench's row is the `contrastive` auxiliary task on the DAFormer host, not SePiCo's own UDA class "
          "(mmseg/models/uda/sepico.py); the differences are named in the table.",
          "BIT-DA/SePiCo's experiments.py and configs hold no SYNTHIA -> Cityscapes run, only the released "
          "checkpoint's mIoU.")),
)}

_GTA = "configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py"
_SYN = "configs/_base_/datasets/uda_synthia_to_cityscapes_512x512.py"
_DACS = "configs/_base_/uda/dacs.py"
_FD = "configs/_base_/uda/dacs_a999_fdthings.py"
_EXP = "experiments.py"
_ADAMW = "configs/_base_/schedules/adamw.py"
_POLY = "configs/_base_/schedules/poly10warm.py"
_ALG = "mmseg/models/uda/dacs.py"
_TRANSFORMS = "mmseg/models/utils/dacs_transforms.py"
_MIT_FILE = "mmseg/models/backbones/mix_transformer.py"
_DAF_MODEL = "configs/_base_/models/daformer_sepaspp_mitb5.py"
_CONV1 = "configs/_base_/models/daformer_conv1_mitb5.py"
_DLV2 = "configs/_base_/models/deeplabv2_r50-d8.py"
_CE = "mmseg/models/losses/cross_entropy_loss.py (reduction='none', then weight_reduce_loss: mean over all pixels)"
_FULL_RES = "mmseg/models/segmentors/encoder_decoder.py whole_inference(rescale=True); mmseg/datasets/custom.py"
# SePiCo's files
_S_EXP = "experiments.py"
_S_UDA = "configs/_base_/uda/sepico.py"
_S_DATA = "configs/_base_/datasets/uda_gta_to_cityscapes_640x640_no_crop.py"
_S_MODEL = "configs/_base_/models/daformer_sepaspp_proj_mitb5.py"
_S_ALG = "mmseg/models/uda/sepico.py"

_AMP = ("udabench trains under CUDA autocast (`amp_dtype` auto: bf16 where the GPU supports it, else fp16 with "
        "a gradient scaler) for speed and memory; expected effect none or small (paper-scale.md P3-18, an estimate)")
_H_CFG = "configs/hrda/gtaHR2csHR_hrda.py"
_H_HEAD = "mmseg/models/decode_heads/hrda_head.py"
_H_SEG = "mmseg/models/segmentors/hrda_encoder_decoder.py"
_GTA_HR = "configs/_base_/datasets/uda_gtaHR_to_cityscapesHR_1024x1024.py"
_SYN_HR = "configs/_base_/datasets/uda_synthiaHR_to_cityscapesHR_1024x1024.py"
_MARGINS = "mmseg/datasets/cityscapes.py pre_pipeline"
_SEPICO_RES = ("udabench's DAFormer host uses DAFormer's data pipeline (512 crops of 1024x512 Cityscapes); SePiCo "
               "trains and tests at 1280x640 with 640 crops (paper-scale.md P0-3: about 1 mIoU, an estimate)")


def _rows(hosts: tuple[str, ...], *items: tuple) -> list[Official]:
    return [Official(*item[:4], hosts=hosts, differs=item[4] if len(item) > 4 else "") for item in items]


def _dataset_rows(hosts: tuple[str, ...], file: str, source: list[int], kept: str, target: list[int],
                  crop: list[int], note: str = "") -> list[Official]:
    """The rows a GTA -> Cityscapes dataset config (`file`) sets: the datasets, their resizes (GTA's 1914x1052
    becomes `kept` under the source resize), the crop and the flip; `note` follows the target's and the
    validation's resize."""
    return _rows(hosts,
                 ("data.source.name", "source dataset", "gta5", file + " (GTADataset)"),
                 ("data.source.resize", "source resize (width, height)", source,
                  file + " (gta_train_pipeline Resize img_scale)"),
                 ("data.source.keep_ratio", "source resize keeps the aspect ratio", True,
                  file + f" (mmseg Resize keep_ratio=True by default: GTA 1914x1052 -> {kept})"),
                 ("data.target.name", "target dataset", "cityscapes", file + " (CityscapesDataset, leftImg8bit/train)"),
                 ("data.target.resize", "target resize (width, height)", list(target),
                  file + f" (cityscapes_train_pipeline Resize img_scale{note})"),
                 ("data.target.keep_ratio", "target resize keeps the aspect ratio", True,
                  file + " (cityscapes_train_pipeline Resize)"),
                 ("data.val.resize", "validation image resize (width, height)", list(target),
                  file + f" (test_pipeline img_scale{note})"),
                 ("data.val.keep_ratio", "validation resize keeps the aspect ratio", True,
                  file + " (test_pipeline Resize keep_ratio=True)"),
                 ("data.crop", "training crop (height, width)", crop, file + " (crop_size)"),
                 ("data.flip", "horizontal flip probability", 0.5, file + " (RandomFlip prob=0.5)"))


RECIPE: list[Official] = [
    # ---------------------------------------------------------------- data (DAFormer code base)
    *_dataset_rows(_DAF, _GTA, [1280, 720], "1280x704", [1024, 512], [512, 512]),
    *_rows(_DAF,
           ("data.batch_size", "source + target images per step (each)", 2, _EXP + " (batch_size = 2)"),
           ("data.source_cat_max_ratio", "source crop re-drawn while one class covers this share", 0.75,
            _GTA + " (RandomCrop cat_max_ratio=0.75)")),
    *_rows((DLV2,), ("data.rare_class_sampling", "rare-class sampling", False, _EXP + " id 1 (rcs_T = None)")),
    *_rows(_MIT,
           ("data.rare_class_sampling", "rare-class sampling", True, _EXP + " (rcs_T = 0.01: setup_rcs)"),
           ("data.rcs_temperature", "rare-class sampling temperature", 0.01, _EXP + " setup_rcs (class_temp)"),
           ("data.rcs_min_pixels", "rare-class image set: pixels of the class", 3000,
            _EXP + " setup_rcs (min_pixels=3000)"),
           ("data.rcs_min_crop_ratio", "rare-class crop re-drawn until it holds min_pixels x this", 0.5,
            _EXP + " setup_rcs (min_crop_ratio=0.5); mmseg/datasets/uda_dataset.py get_rare_class_sample")),
    # ---------------------------------------------------------------- model
    *_rows((DLV2,),
           ("model.arch", "architecture", "deeplabv2", "configs/_base_/models/deeplabv2red_r50-d8.py (DLV2Head)"),
           ("model.backbone", "encoder", "resnet101c",
            _EXP + " get_backbone_cfg('r101v1c'); " + _DLV2 + " (ResNetV1c, deep stem = timm resnet101c)"),
           ("model.pretrained", "encoder initialisation", "pretrained/resnet101_v1c.pth",
            _EXP + " get_pretraining_file('r101v1c') = open-mmlab://resnet101_v1c"),
           ("model.options.aspp_dilations", "ASPP dilations", [6, 12],
            "configs/_base_/models/deeplabv2red_r50-d8.py (dilations=(6, 12))"),
           ("model.options.output_stride", "encoder output stride", 8,
            _DLV2 + " (strides (1, 2, 1, 1), dilations (1, 1, 2, 4))"),
           ("model.options.norm", "encoder normalisation", "batch", _DLV2 + " (norm_cfg BN, norm_eval=False)")),
    *_rows(_MIT,
           ("model.arch", "architecture", "daformer", _DAF_MODEL + " (DAFormerHead, separable ASPP fusion)"),
           ("model.backbone", "encoder", "pvt_v2_b5", _MIT_FILE + " mit_b5 (= timm pvt_v2_b5, tensor for tensor)"),
           ("model.pretrained", "encoder initialisation", "pretrained/mit_b5.pth",
            _EXP + " get_pretraining_file('mitb5')"),
           ("model.options.embed_dim", "head width", 256, _CONV1 + " (channels=256, embed_dims=256)"),
           ("model.options.fusion_dilations", "fusion ASPP dilations", [1, 6, 12, 18],
            _DAF_MODEL + " (dilations=(1, 6, 12, 18))"),
           ("model.options.dropout", "head dropout", 0.1, _CONV1 + " (dropout_ratio=0.1)"),
           ("model.options.encoder_options.drop_path_rate", "encoder stochastic depth", 0.1,
            _MIT_FILE + " (MixVisionTransformer drop_path_rate=0.1)")),
    # ---------------------------------------------------------------- host
    *_rows(_DAF,
           ("method.host", "self-training host", "dacs", _DACS + " (type='DACS')"),
           ("method.pseudo_threshold", "pseudo-label confidence threshold", 0.968, _DACS + " (pseudo_threshold=0.968)"),
           ("method.mix", "domain mixing", "classmix", _DACS + " (mix='class')"),
           ("method.classmix_classes", "ClassMix classes: half of the batch's (ignore included)", "batch",
            _TRANSFORMS + " get_class_masks (torch.unique over the source batch)"),
           ("method.color_jitter", "colour jitter strength", 0.2, _DACS + " (color_jitter_strength=0.2)"),
           ("method.color_jitter_p", "colour jitter probability", 0.8,
            _DACS + " (color_jitter_probability=0.2: jitter when U(0,1) > 0.2, " + _TRANSFORMS + ")"),
           ("method.blur_p", "Gaussian blur probability", 0.5,
            _DACS + " (blur=True: blur when U(0,1) > 0.5, " + _TRANSFORMS + ")"),
           ("method.source_ce_mean", "source cross-entropy averaged over", "all", _CE)),
    *_rows(_DAF,
           ("method.teacher_bn", "EMA teacher normalisation", "batch",
            _ALG + " (EMA model in train mode, only _DropoutNd/DropPath off; _update_ema over parameters())")),
    *_rows((DLV2,),
           ("method.ema_alpha", "EMA teacher alpha", 0.99, _DACS + " (alpha=0.99)"),
           ("method.fd.weight", "ImageNet feature distance weight", 0.0,
            _DACS + " (imnet_feature_dist_lambda=0; " + _EXP + " id 1: uda 'dacs')"),
           ("method.pseudo_weight_ignore_top", "pseudo-label crop: top rows", 0, _EXP + " id 1 (plcrop = False)"),
           ("method.pseudo_weight_ignore_bottom", "pseudo-label crop: bottom rows", 0,
            _EXP + " id 1 (plcrop = False)")),
    *_rows(_MIT,
           ("method.ema_alpha", "EMA teacher alpha", 0.999, _FD + " (alpha=0.999)"),
           ("method.fd.weight", "ImageNet feature distance weight", 0.005, _FD + " (imnet_feature_dist_lambda=0.005)"),
           ("method.fd.classes", "feature distance classes", list(FD_THING_CLASSES),
            _FD + " (imnet_feature_dist_classes)"),
           ("method.fd.min_ratio", "feature distance cell purity", 0.75,
            _FD + " (imnet_feature_dist_scale_min_ratio=0.75)"),
           ("method.pseudo_weight_ignore_top", "pseudo-label crop: top rows", 15,
            _EXP + " (plcrop: pseudo_weight_ignore_top = 15); " + _ALG),
           ("method.pseudo_weight_ignore_bottom", "pseudo-label crop: bottom rows", 120,
            _EXP + " (plcrop: pseudo_weight_ignore_bottom = 120); " + _ALG)),
    *_rows(_DAF,
           ("method.pseudo_image_margins", "pseudo-label margins of the image (top, bottom, left, right)", None,
            _ALG + " (pseudo_weight_ignore_top/_bottom only; HRDA adds crop_pseudo_margins)")),
    # ---------------------------------------------------------------- optimiser, schedule, evaluation
    *_rows(_DAF,
           ("optim.lr", "AdamW learning rate", 6e-5, _ADAMW + "; " + _EXP + " (lr = 0.00006)"),
           ("optim.head_lr_mult", "head learning-rate multiplier", 10.0,
            _EXP + " (pmult: custom_keys head lr_mult=10.)"),
           ("optim.weight_decay", "weight decay", 0.01, _ADAMW + " (weight_decay=0.01)"),
           ("optim.betas", "AdamW betas", [0.9, 0.999], _ADAMW + " (betas=(0.9, 0.999))"),
           ("optim.grad_clip", "gradient clipping", None, _EXP + " (optimizer_config = None)"),
           ("schedule.iterations", "iterations", 40000, _EXP + " (iters = 40000)"),
           ("schedule.warmup", "linear warm-up iterations", 1500, _POLY + " (warmup_iters=1500)"),
           ("schedule.warmup_ratio", "warm-up start ratio", 1e-6, _POLY + " (warmup_ratio=1e-6)"),
           ("schedule.power", "poly decay power", 1.0, _POLY + " (power=1.0, min_lr=0.0)"),
           ("eval.interval", "evaluation interval", 4000, _EXP + " (evaluation interval=iters // 10)"),
           ("eval.mode", "inference", "whole", _DLV2 + ", " + _CONV1 + " (test_cfg mode='whole')"),
           ("eval.protocol", "classes in the mean", "19", _GTA + " (CityscapesDataset: 19 classes)"),
           ("eval.full_resolution_labels", "scored against full-resolution labels", True, _FULL_RES),
           ("amp", "mixed precision", False, _EXP + " (optimizer_config = None: no fp16 hook, fp32)", _AMP),
           ("study.seeds", "seeds", [0, 1, 2], _EXP + " (seeds = [0, 1, 2])")),
    *_rows((DLV2,), ("optim.encoder_norm_decay_mult", "weight decay x this on encoder norm parameters", 1.0,
                     _EXP + " (the norm rule applies to 'mit' backbones only)")),
    *_rows(_MIT, ("optim.encoder_norm_decay_mult", "weight decay x this on encoder norm parameters", 0.0,
                  _EXP + " ('mit' in backbone: custom_keys norm decay_mult=0.)")),
    # ---------------------------------------------------------------- MIC (on DAFormer: id 81; on HRDA: id 80)
    *_rows((MIC, MIC_HRDA),
           ("method.aux.mim.options.variant", "masked-image task", "mic",
            "mmseg/models/uda/masking_consistency_module.py (masked target vs the teacher's pseudo-labels)"),
           ("method.aux.mim.weight", "MIC loss weight", 1.0, _EXP + " (mask_lambda = 1)"),
           ("method.aux.mim.start_iter", "MIC from iteration", 0, _ALG + " (masked loss every iteration)")),
    *_rows((MIC,),
           ("method.aux.mim.options.mask_ratio", "MIC mask ratio", 0.7, _EXP + " id 81 (mask_ratio = 0.7)"),
           ("method.aux.mim.options.block", "MIC mask block (pixels)", 32,
            _EXP + " id 81 (mask_block_size = 32 at 512 crops)"),
           ("method.aux.mim.options.color_aug", "colour jitter and blur on the masked image", True,
            _EXP + " id 81 (mask_mode = 'separatetrgaug')")),
    *_rows((MIC_HRDA,),
           ("method.aux.mim.options.mask_ratio", "MIC mask ratio", 0.7,
            _EXP + " id 80 (mask_ratio = 0.7); configs/mic/gtaHR2csHR_mic_hrda.py (mask_generator)"),
           ("method.aux.mim.options.block", "MIC mask block (pixels)", 64,
            _EXP + " id 80 (mask_block_size = 64 at 1024 crops); configs/mic/gtaHR2csHR_mic_hrda.py"),
           ("method.aux.mim.options.color_aug", "colour jitter and blur on the masked image", True,
            _EXP + " id 80 (mask_mode = 'separatetrgaug')")),
    # ---------------------------------------------------------------- HRDA (lhoyer/HRDA; the rest: DAFormer's)
    *_dataset_rows((HRDA,), _GTA_HR, [2560, 1440], "2560x1407", [2048, 1024], [1024, 1024], ": full resolution"),
    *_rows((HRDA,),
           ("data.source_cat_max_ratio", "source crop re-drawn while one class covers this share", 0.75,
            _GTA_HR + " (RandomCrop cat_max_ratio=0.75)"),
           ("data.rcs_min_crop_ratio", "rare-class crop re-drawn until it holds min_pixels x this", 2.0,
            _H_CFG + " (rare_class_sampling min_crop_ratio=2.0); experiments.py id 40 (0.5 * 2 ** 2)"),
           ("model.arch", "architecture", "hrda", _H_CFG + " (HRDAEncoderDecoder, HRDAHead)"),
           ("model.options.base", "single-scale segmentor in both views", "daformer",
            _H_CFG + " (single_scale_head='DAFormerHead'; " + _DAF_MODEL + ")"),
           ("model.options.base_options.embed_dim", "head width", 256, _CONV1 + " (channels=256, embed_dims=256)"),
           ("model.options.base_options.fusion_dilations", "fusion ASPP dilations", [1, 6, 12, 18],
            _DAF_MODEL + " (dilations=(1, 6, 12, 18))"),
           ("model.options.base_options.dropout", "head dropout", 0.1, _CONV1 + " (dropout_ratio=0.1)"),
           ("model.options.context_scale", "context view scale", 0.5, _H_CFG + " (scales=[1, 0.5])"),
           ("model.options.detail_crop", "detail crop (height, width)", [512, 512],
            _H_CFG + " (hr_crop_size=[512, 512])"),
           ("model.options.crop_coord_divisible", "detail crop corners on a grid of (pixels)", 8,
            _H_CFG + " (crop_coord_divisible=8)"),
           ("model.options.detail_loss_weight", "detail crop loss weight (lambda_d)", 0.1,
            _H_CFG + " (hr_loss_weight=0.1)"),
           ("model.options.attention_classwise", "scale attention per class", True,
            _H_CFG + " (attention_classwise=True)"),
           ("model.options.attention_embed_dim", "scale attention head width", 256,
            _H_HEAD + " (attention_embed_dim=256; DAFormerHead with a 1x1 conv fusion)"),
           ("model.options.fixed_attention", "a constant scale attention instead of the learned head", None,
            _H_HEAD + " (fixed_attention=None: the learned scale attention)"),
           ("model.options.context_antialias", "low-pass filter before the context view's resize", False,
            _H_SEG + " (resize: bilinear interpolation, no antialiasing)"),
           ("model.options.slide_detail", "detail view in overlapping windows at inference (pseudo-labels)", True,
            _H_CFG + " (hr_slide_inference=True); " + _H_SEG + " (hr_slide_overlapping=True)"),
           ("probe:fd_view_scale", "feature distance on the encoder features of the input at scale", 0.5,
            _H_CFG + " (feature_scale=0.5: the context view's features, as the original DAFormer)"),
           ("method.pseudo_weight_ignore_top", "pseudo-label crop: top rows", 0,
            _DACS + " (pseudo_weight_ignore_top=0; experiments.py id 40 plcrop='v2': the image's margins instead, "
            + _ALG + " asserts valid_pseudo_mask is None otherwise)"),
           ("method.pseudo_weight_ignore_bottom", "pseudo-label crop: bottom rows", 0,
            _DACS + " (pseudo_weight_ignore_bottom=0; experiments.py id 40 plcrop='v2')"),
           ("method.pseudo_image_margins", "pseudo-label margins of the image (top, bottom, left, right)",
            [30, 240, 30, 30], _H_CFG + " (crop_pseudo_margins=[30, 240, 30, 30]); " + _MARGINS + " (the mask of "
            "the 2048x1024 image, cropped and flipped with it: mmseg/datasets/uda_dataset.py, " + _ALG + ")"),
           ("eval.mode", "inference", "slide", _H_CFG + " (test_cfg mode='slide', batched_slide=True)"),
           ("eval.crop", "sliding window (height, width)", [1024, 1024], _H_CFG + " (test_cfg crop_size=[1024, 1024])"),
           ("eval.stride", "sliding window stride", [512, 512], _H_CFG + " (test_cfg stride=[512, 512])"),
           ("eval.protocol", "classes in the mean", "19", _GTA_HR + " (CityscapesDataset: 19 classes)"),
           ("study.seeds", "seeds", [0, 1, 2], _EXP + " id 40 (seeds = [0, 1, 2])")),
    # ---------------------------------------------------------------- SePiCo (BIT-DA/SePiCo)
    *_rows((SEPICO,),
           ("data.source.name", "source dataset", "gta5", _S_DATA + " (GTADataset)"),
           ("data.source.resize", "source resize (width, height)", [1280, 720], _S_DATA + " (Resize img_scale)"),
           ("data.source.keep_ratio", "source resize keeps the aspect ratio", True,
            _S_DATA + " (mmseg Resize keep_ratio=True by default)"),
           ("data.target.name", "target dataset", "cityscapes", _S_DATA + " (CityscapesDataset)"),
           ("data.target.resize", "target resize (width, height)", [1280, 640], _S_DATA + " (Resize img_scale)",
            _SEPICO_RES),
           ("data.target.keep_ratio", "target resize keeps the aspect ratio", True, _S_DATA + " (Resize)"),
           ("data.val.resize", "validation image resize (width, height)", [1280, 640],
            _S_DATA + " (test_pipeline img_scale)", _SEPICO_RES),
           ("data.val.keep_ratio", "validation resize keeps the aspect ratio", True,
            _S_DATA + " (test_pipeline Resize keep_ratio=True)"),
           ("data.crop", "training crop (height, width)", [640, 640], _S_EXP + " (crop = '640x640')", _SEPICO_RES),
           ("data.flip", "horizontal flip probability", 0.5, _S_DATA + " (RandomFlip prob=0.5)"),
           ("data.batch_size", "source + target images per step (each)", 2, _S_EXP + " (batch_size = 2)"),
           ("data.source_cat_max_ratio", "source crop re-drawn while one class covers this share", 0.75,
            _S_DATA + " (RandomCrop cat_max_ratio=0.75)"),
           ("data.rare_class_sampling", "rare-class sampling", True, _S_EXP + " (rcs_T = 0.01: setup_rcs)"),
           ("data.rcs_temperature", "rare-class sampling temperature", 0.01, _S_EXP + " setup_rcs (class_temp)"),
           ("data.rcs_min_pixels", "rare-class image set: pixels of the class", 3000,
            _S_EXP + " setup_rcs (min_pixels=3000)"),
           ("data.rcs_min_crop_ratio", "rare-class crop re-drawn until it holds min_pixels x this", 0.5,
            _S_EXP + " setup_rcs (min_crop_ratio=0.5)"),
           (None, "target crop drawn on the teacher's pseudo-labels (cat_max_ratio 0.75), pseudo-labels "
            "re-generated on the crop", True, _S_EXP + " id 6 (pseudo_random_crop, regen_pseudo); " + _S_ALG,
            "udabench crops the target in the data loader, as DAFormer does"),
           ("model.arch", "architecture", "daformer", _S_MODEL + " (DAFormerHead, separable ASPP fusion)"),
           ("model.backbone", "encoder", "pvt_v2_b5", _S_MODEL + " (mit_b5 = timm pvt_v2_b5)"),
           ("model.pretrained", "encoder initialisation", "pretrained/mit_b5.pth",
            _S_EXP + " get_pretraining_file('mitb5')"),
           ("model.options.embed_dim", "head width", 256, _S_MODEL + " (channels=256, embed_dims=256)"),
           ("model.options.fusion_dilations", "fusion ASPP dilations", [1, 6, 12, 18],
            _S_MODEL + " (dilations=(1, 6, 12, 18))"),
           ("model.options.dropout", "head dropout", 0.1, _S_MODEL + " (dropout_ratio=0.1)"),
           ("model.options.encoder_options.drop_path_rate", "encoder stochastic depth", 0.1,
            "mmseg/models/backbones/mix_transformer.py (MixVisionTransformer drop_path_rate=0.1)"),
           ("method.host", "self-training host", "sepico", _S_UDA + " (type='SePiCo')",
            "udabench's SePiCo is the `contrastive` task on the DACS/DAFormer host; the rows below name where "
            "that host differs from SePiCo's"),
           ("method.ema_alpha", "EMA teacher alpha", 0.999, _S_UDA + " (alpha=0.999)"),
           ("method.pseudo_threshold", "pseudo-label confidence threshold", 0.968, _S_UDA + " (pseudo_threshold=0.968)"),
           ("method.teacher_bn", "EMA teacher normalisation", "batch",
            _S_ALG + " (EMA model in train mode, only _DropoutNd/DropPath off; _update_ema over parameters())"),
           ("method.mix", "domain mixing", "classmix", _S_UDA + " (mix='class')"),
           ("method.classmix_classes", "ClassMix classes: half of the batch's (ignore included)", "batch",
            _S_ALG + " (get_class_masks from dacs_transforms.py)"),
           ("method.color_jitter", "colour jitter strength", 0.2, _S_UDA + " (color_jitter_strength=0.2)"),
           ("method.color_jitter_p", "colour jitter probability", 0.8,
            _S_UDA + " (color_jitter_probability=0.2: jitter when U(0,1) > 0.2)"),
           ("method.blur_p", "Gaussian blur probability", 0.5, _S_UDA + " (blur=True)"),
           ("method.source_ce_mean", "source cross-entropy averaged over", "all", _CE),
           ("method.fd.weight", "ImageNet feature distance weight", 0.0, _S_ALG + " (no ImageNet feature distance)",
            "the DAFormer host keeps its thing-class feature distance under every auxiliary task (one host for "
            "the comparison); SePiCo has none"),
           ("method.pseudo_weight_ignore_top", "pseudo-label crop: top rows", 15,
            _S_EXP + " (plcrop = True: pseudo_weight_ignore_top = 15)"),
           ("method.pseudo_weight_ignore_bottom", "pseudo-label crop: bottom rows", 120,
            _S_EXP + " (plcrop = True: pseudo_weight_ignore_bottom = 120)"),
           ("method.pseudo_image_margins", "pseudo-label margins of the image (top, bottom, left, right)", None,
            _S_ALG + " (pseudo_weight_ignore_top/_bottom only)"),
           ("optim.lr", "AdamW learning rate", 6e-5, _S_EXP + " (lr = 0.00006)"),
           ("optim.head_lr_mult", "head learning-rate multiplier", 10.0, _S_EXP + " (pmult: head lr_mult=10.)"),
           ("optim.weight_decay", "weight decay", 0.01, "configs/_base_/schedules/adamw.py (weight_decay=0.01)"),
           ("optim.betas", "AdamW betas", [0.9, 0.999], "configs/_base_/schedules/adamw.py (betas=(0.9, 0.999))"),
           ("optim.grad_clip", "gradient clipping", None, _S_EXP + " (optimizer_config = None)"),
           ("optim.encoder_norm_decay_mult", "weight decay x this on encoder norm parameters", 0.0,
            _S_EXP + " ('mit' in backbone: custom_keys norm decay_mult=0.)"),
           ("schedule.iterations", "iterations", 40000, _S_EXP + " (iters = 40000)"),
           ("schedule.warmup", "linear warm-up iterations", 1500, "configs/_base_/schedules/poly10warm.py"),
           ("schedule.warmup_ratio", "warm-up start ratio", 1e-6, "configs/_base_/schedules/poly10warm.py"),
           ("schedule.power", "poly decay power", 1.0, "configs/_base_/schedules/poly10warm.py"),
           ("eval.interval", "evaluation interval", 1000, _S_EXP + " (evaluation interval=1000)",
            "how often the model is scored, not how it trains; udabench scores every 4000 iterations as DAFormer"),
           ("eval.mode", "inference", "whole", _S_MODEL + " (test_cfg mode='whole')"),
           ("eval.protocol", "classes in the mean", "19", _S_DATA + " (CityscapesDataset: 19 classes)"),
           ("eval.full_resolution_labels", "scored against full-resolution labels", True, _FULL_RES),
           ("amp", "mixed precision", False, _S_EXP + " (optimizer_config = None: fp32)", _AMP),
           ("study.seeds", "seeds", [76], _S_EXP + " (seeds = [76])",
            "udabench runs three seeds (0, 1, 2) of every host, as DAFormer and MIC report; SePiCo's "
            "experiments.py runs seed 76 once"),
           # the contrastive task
           ("method.aux.contrastive.weight", "contrastive loss weight", 1.0, _S_EXP + " (contrastive_weight = 1.0)"),
           ("method.aux.contrastive.start_iter", "task from iteration (prototypes updated from here)", 0,
            _S_ALG + " (update_proto at every iteration)"),
           ("method.aux.contrastive.options.loss_start", "contrastive loss from iteration", 3000,
            _S_EXP + " (start_distribution_iter = 3000); " + _S_ALG),
           ("method.aux.contrastive.lr_mult", "projection head learning-rate multiplier", 10.0,
            _S_EXP + " (custom_keys head lr_mult=10. matches auxiliary_head)"),
           ("method.aux.contrastive.options.head", "projection head", "sepico",
            _S_EXP + " (num_convs = 2); mmseg/models/decode_heads/proj_head.py"),
           ("probe:contrastive_head", "projection head layers (then L2-normalised)", "conv-BN-ReLU-conv-BN-ReLU",
            "mmseg/models/decode_heads/proj_head.py (num_convs=2: two ConvModules, ReLU by default)"),
           ("method.aux.contrastive.options.proj_dim", "embedding width", 512, _S_EXP + " (channels = 512)"),
           ("method.aux.contrastive.options.temperature", "contrast temperature (logits divided by it)", 100.0,
            _S_EXP + " (contrastive_temperature = 100.)"),
           ("method.aux.contrastive.options.min_purity", "label downscaling purity", 0.75,
            _S_EXP + " (scale_min_ratio = 0.75)"),
           ("method.aux.contrastive.options.in_index", "encoder stages (None = all, resized and concatenated)",
            None, _S_EXP + " id 6 (in_index [0, 1, 2, 3], contrast_mode 'resize_concat')"),
           ("method.aux.contrastive.options.ema_alpha", "teacher-side projection head EMA alpha", 0.999,
            _S_UDA + " (alpha=0.999 for the whole EMA model, auxiliary head included)"),
           ("method.aux.contrastive.options.ema_bn", "teacher-side projection head normalisation", "batch",
            _S_ALG + " (EMA model in train mode: batch statistics; _update_ema over parameters())"),
           ("method.aux.contrastive.options.reg_weight", "prototype regulariser (relative weight)", 1.0,
            _S_EXP + " id 6 (use_reg = True, reg_relative_weight = 1.0); mmseg/models/losses/contrastive_loss.py"),
           ("method.aux.contrastive.options.source", "contrast source pixels (ground truth)", True,
            _S_ALG + " (source forward_train mode 'all': CE + contrast)"),
           ("method.aux.contrastive.options.target", "contrast target pixels (pseudo-labels)", True,
            _S_ALG + " (target forward_train mode 'aux')"),
           ("method.aux.contrastive.options.source_aug", "strong augmentation of the source view", True,
            _S_UDA + " (enable_strong_aug=True); " + _S_ALG + " (strong_transform on img)"),
           ("method.aux.contrastive.options.color_aug", "strong augmentation of the target view", True,
            _S_UDA + " (enable_strong_aug=True); " + _S_ALG)),
]

# Behaviour that is no config value (udabench's way in `ours`), in every host's code base
_RESIZE = "mmseg/datasets/pipelines/transforms.py Resize (mmcv.imrescale: cv2 bilinear)"
_JITTER = "mmseg/models/utils/dacs_transforms.py color_jitter (kornia ColorJitter), one draw per iteration"
for _hosts, _ema_file in ((_DAF, _ALG), ((SEPICO,), _S_ALG)):
    RECIPE += [
        Official(None, "rare-class image set: images with more than rcs_min_pixels of the class", "more than",
                 "mmseg/datasets/uda_dataset.py (pixels > self.rcs_min_pixels)", _hosts,
                 "one pixel at the threshold; no effect expected", ours="at least (harness/engine/training.py)"),
        Official(None, "image downscaling", "not antialiased", _RESIZE, _hosts,
                 "expected effect none or small (paper-scale.md P3-16, an estimate)",
                 ours="PIL bilinear, antialiased (harness/data/dataset.py)"),
        Official(None, "EMA warm-up alpha after step t", "min(1 - 1/(t+2), alpha)",
                 _ema_file + " (_update_ema(local_iter) at the start of the next iteration)", _hosts,
                 "the two agree within 1/(t+1) - 1/(t+2) and both reach alpha; no effect expected",
                 ours="min(1 - 1/(t+1), alpha) (methods/dacs.py after_optimizer_step)"),
        Official(None, "colour jitter implementation", "kornia, additive brightness, random order, one "
                 "decision per batch", _JITTER, _hosts,
                 "expected effect none or small (paper-scale.md P3-17, an estimate)",
                 ours="torchvision, multiplicative brightness, fixed order, one decision per image (methods/dacs.py)"),
    ]

# SYNTHIA -> Cityscapes (`--scale paper-synthia`; DAFormer experiments.py id 7): these rows replace the GTA
# ones of the same path. Of the four hosts only DAFormer has an official SYNTHIA run (`Host.scales`).
RECIPE += [
    Official("data.source.name", "source dataset", "synthia", _SYN + " (SynthiaDataset)", (DAFORMER,),
             scale="paper-synthia"),
    Official("data.source.resize", "source resize (width, height)", [1280, 760], _SYN + " (Resize img_scale)",
             (DAFORMER,), scale="paper-synthia"),
    Official("eval.protocol", "classes in the mean", "16",
             "README.md (Synthia->Cityscapes: mIoU over 16 classes, mIoU16 = mIoU19 * 19 / 16)", (DAFORMER,),
             scale="paper-synthia"),
    # HRDA (and MIC(HRDA), inheriting): experiments.py id 40 syn2cs = ('synthiaHR', 'cityscapesHR', '1024x1024')
    Official("data.source.name", "source dataset", "synthia", _SYN_HR + " (SynthiaDataset)", (HRDA,),
             scale="paper-synthia"),
    Official("data.source.resize", "source resize (width, height)", [2560, 1520],
             _SYN_HR + " (synthia_train_pipeline Resize img_scale)", (HRDA,), scale="paper-synthia"),
    Official("eval.protocol", "classes in the mean", "16",
             "README.md (Synthia→Cityscapes: mIoU over the 16 classes SYNTHIA labels)", (HRDA,),
             scale="paper-synthia"),
]

# Not recipe values: where things are, how fast, how often results are written (path -> why)
NOT_RECIPE: dict[str, str] = {
    "name": "a label", "output": "where the run writes", "device": "where it runs", "threads": "CPU threads",
    "log_interval": "logging", "checkpoint_interval": "checkpoint frequency", "seed": "one trial's seed (see seeds)",
    "amp_dtype": "which autocast type (amp row)", "cudnn_benchmark": "speed", "deterministic": "CPU-style determinism",
    "data.workers": "loader processes", "data.source.root": "a folder", "data.target.root": "a folder",
    "data.val.root": "a folder", "data.source.domain": "synthetic sets only", "data.target.domain": "synthetic sets only",
    "data.val.domain": "synthetic sets only", "data.source.split": "train", "data.target.split": "train",
    "data.val.split": "val", "data.val.name": "as the target", "data.source.options": "loader options",
    "data.target.options": "loader options", "data.val.options": "loader options",
    "eval.max_images": "smoke runs", "eval.batch_size": "speed",
    "model.options.out_indices": "all four stages, as the official head",
    "model.options.base_options.out_indices": "all four stages, as the official head",
    "checkpoint_keep": "which checkpoints are kept", "selection": "label-free criteria logged, result-neutral",
    "method.aux.mim.lr_mult": "the mic variant has no parameters of its own",
    "method.aux.mim.options.target": "recon variant only", "method.aux.mim.options.norm_target": "recon variant only",
    "method.aux.mim.options.hog_bins": "recon variant only", "method.aux.mim.options.hog_cell": "recon variant only",
    "method.aux.mim.options.decoder_dim": "recon variant only",
}


# Fields that do nothing while a switch is off (path -> (switch path, its off value)): no row needed when the
# switch is off in udabench's config or in the official recipe (then the field has no official value)
INERT: dict[str, tuple[str, Any]] = {
    "data.rcs_temperature": ("data.rare_class_sampling", False),
    "data.rcs_min_pixels": ("data.rare_class_sampling", False),
    "data.rcs_min_crop_ratio": ("data.rare_class_sampling", False),
    "method.fd.classes": ("method.fd.weight", 0.0),
    "method.fd.min_ratio": ("method.fd.weight", 0.0),
    "eval.crop": ("eval.mode", "whole"),
    "eval.stride": ("eval.mode", "whole"),
    "eval.label_size": ("eval.full_resolution_labels", True),  # the labels' size is their stored one
}


def _key(row: Official) -> str:
    return row.path or row.what


def _merged(rows: list[Official], own: list[Official]) -> list[Official]:
    """`rows` with each of `own` replacing the row of the same path (or, without a path, the same item), the
    others appended."""
    index = {_key(r): i for i, r in enumerate(rows)}
    out = list(rows)
    for r in own:
        if _key(r) in index:
            out[index[_key(r)]] = r
        else:
            index[_key(r)] = len(out)
            out.append(r)
    return out


def _chain(host: str, scale: str) -> list[Official]:
    h = HOSTS[host]
    rows = [r for r in _chain(h.base, scale) if r.path not in h.without] if h.base else []
    rows = _merged(rows, [r for r in RECIPE if host in r.hosts and r.scale is None])
    return _merged(rows, [r for r in RECIPE if host in r.hosts and r.scale == scale])


def rows_for(host: str, scale: str = "paper") -> list[Official]:
    """The official rows of `host` at `scale`: its base's (`Host.base`, recursively), then its own general
    rows, then its own rows of that scale, each replacing the earlier row of the same path; KeyError for a
    host without an official run at that scale."""
    if scale not in HOSTS[host].scales:
        raise KeyError(f"{host} has no official run at scale {scale}")
    return _chain(host, scale)


def origin(host: str, row: Official) -> Host:
    """The host whose official code a row of `host` comes from: `host` or the nearest base listing it."""
    h = HOSTS[host]
    while h.name not in row.hosts and h.base:
        h = HOSTS[h.base]
    return h

"""Pretrained encoder weights from local files, in the formats users have them (never from a hub).

A weights file is read as data only (`torch.load(weights_only=True)` or safetensors: a pickle that
carries code is refused), unwrapped (`{"state_dict": ...}`, `{"model": ...}`, a `module.` or
`backbone.` prefix), converted to timm's names, and then checked against the timm backbone tensor by
tensor: every tensor but the classifier present with its shape, nothing else. timm itself loads
`features_only` weights non-strictly and would silently keep random tensors, so the check comes first.

The formats, detected from the keys:
- `timm`: `timm.create_model(name).state_dict()`; torchvision's ResNets have the same names;
- `mit`: SegFormer's MiT files (`mit_b5.pth`, the initialisation of DAFormer, MIC, HRDA and SePiCo),
  converted by timm's own `pvt_v2.checkpoint_filter_fn` (MiT-B5 is exactly timm's `pvt_v2_b5`: 1052
  tensors one to one; ../shared/reference/paper-scale.md 2.1);
- `mmseg-resnet-v1c`: mmcv/mmseg's `ResNetV1c` (`resnet101_v1c`, the initialisation of DAFormer's and
  MIC's DeepLab-v2), the deep stem `stem.{0,1,3,4,6}` -> timm `conv1.{0,1,3,4,6}` and `stem.7` -> `bn1`;
  the rest has timm's names (timm `resnet101c` is the same network; paper-scale.md 2.2).
Any other timm family with a `checkpoint_filter_fn` gets it applied, as timm does when it loads.

`OFFICIAL` names the files the paper scale starts from and where to obtain each.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import ConfigError

FORMATS = ("timm", "mit", "mmseg-resnet-v1c")


class WeightsFileError(ConfigError):
    """A pretrained weights file that cannot be read or does not match its backbone."""


@dataclass(frozen=True)
class OfficialWeights:
    """A pretrained encoder the published numbers start from."""

    file: str      # where the paper scale expects it, relative to the project root
    backbone: str  # the timm backbone it loads into
    format: str    # one of FORMATS
    what: str
    source: str    # where to obtain it
    used_by: str   # which official code starts from it, and the file that says so


OFFICIAL: dict[str, OfficialWeights] = {
    "mit_b5": OfficialWeights(
        file="pretrained/mit_b5.pth", backbone="pvt_v2_b5", format="mit",
        what="SegFormer's ImageNet-1k MiT-B5",
        source="NVlabs/SegFormer README, 'ImageNet-1K pretrained weights' (the mit_b5.pth file as distributed; "
               "DAFormer's README links the same files)",
        used_by="DAFormer, MIC, HRDA, SePiCo: configs/_base_/models/daformer_conv1_mitb5.py "
                "(pretrained='pretrained/mit_b5.pth')"),
    "resnet101_v1c": OfficialWeights(
        file="pretrained/resnet101_v1c.pth", backbone="resnet101c", format="mmseg-resnet-v1c",
        what="mmcv's ImageNet ResNet-101 V1c (deep stem)",
        source="open-mmlab://resnet101_v1c = "
               "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
        used_by="DAFormer and MIC DeepLab-v2: experiments.py get_pretraining_file('r101v1c'), "
                "configs/_base_/models/deeplabv2red_r50-d8.py"),
}


def official_for(path: str | Path) -> OfficialWeights | None:
    """The official weights a path names (by file name), if any."""
    name = Path(path).name
    return next((w for w in OFFICIAL.values() if Path(w.file).name == name), None)


# --------------------------------------------------------------------------------------------------
# reading

def check_present(path: str | Path) -> None:
    """WeightsFileError unless `path` is a file; the message says where to obtain an official one."""
    path = Path(path)
    if not path.is_file():
        official = official_for(path)
        hint = f"; it is {official.what}, from {official.source}" if official else ""
        raise WeightsFileError(
            f"pretrained weights file '{path}' does not exist{hint}. List what each scale expects with "
            "`udabench weights list`; or set model.pretrained: null for a random initialisation")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (.safetensors, or a torch file with weights_only=True) into a state dict."""
    from timm.models import load_state_dict

    path = Path(path)
    check_present(path)
    try:
        sd = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as e:  # unpickling errors (code refused), truncated files, not a dict, ...
        first = (str(e).strip().split(". ")[0].splitlines() or [""])[0]
        raise WeightsFileError(
            f"pretrained weights file '{path}' is not a readable state dict ({type(e).__name__}: {first})") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"pretrained weights file '{path}' does not hold a state dict of tensors")
    return dict(sd)


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    if any(k.startswith(("patch_embed1.", "block1.")) for k in sd):
        return "mit"
    if "stem.0.weight" in sd and "layer1.0.conv1.weight" in sd:
        return "mmseg-resnet-v1c"
    return "timm"


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _mmseg_v1c_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg ResNetV1c: `stem.{0,1,3,4,6}` -> `conv1.{...}`, `stem.7` -> `bn1` (timm's deep stem)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            index, _, rest = k[len("stem."):].partition(".")
            k = f"bn1.{rest}" if index == "7" else f"conv1.{index}.{rest}"
        out[k] = v
    return out


def to_timm(sd: dict[str, torch.Tensor], reference: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """`sd` in timm's names for `reference` (a model of the backbone), and the format it came in."""
    sd = _strip(_strip(sd, "module."), "backbone.")
    fmt = detect_format(sd)
    if fmt == "mmseg-resnet-v1c":
        sd = _mmseg_v1c_to_timm(sd)
    family = importlib.import_module(type(reference).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:  # what timm applies to its own downloads (pvt_v2: MiT names -> timm's)
        try:
            sd = filter_fn(sd, reference)
        except Exception as e:  # noqa: BLE001 - a filter that cannot read this file: the check below names it
            if fmt != "timm":
                raise WeightsFileError(f"timm's {family.__name__}.checkpoint_filter_fn cannot convert a "
                                       f"{fmt} file: {type(e).__name__}: {e}") from None
    return sd, fmt


# --------------------------------------------------------------------------------------------------
# checking

@dataclass
class Verified:
    """What `verify` found: the file's format, its tensors matched to the backbone, its sha256."""

    path: Path
    backbone: str
    format: str
    matched: int
    dropped: list[str]  # the classifier's tensors, when the file has them
    sha256: str
    state_dict: dict[str, torch.Tensor]


def load_backbone_weights(path: str | Path, backbone: str, **timm_kwargs: Any) -> dict[str, torch.Tensor]:
    """Read `path`, convert it to timm's names and check it against timm's `backbone` (all tensors but
    the classifier, same shapes); the state dict to load."""
    return verify(path, backbone, sha256=False, **timm_kwargs).state_dict


def verify(path: str | Path, backbone: str, sha256: bool = True, **timm_kwargs: Any) -> Verified:
    import timm

    path = Path(path)
    raw = read_state_dict(path)
    with torch.device("meta"):
        reference = timm.create_model(backbone, **timm_kwargs)
    sd, fmt = to_timm(raw, reference)
    classifier = reference.pretrained_cfg.get("classifier") or ()
    if isinstance(classifier, str):
        classifier = (classifier,)
    prefixes = tuple(f"{c}." for c in classifier)
    dropped = [k for k in sd if k.startswith(prefixes)]
    sd = {k: v for k, v in sd.items() if not k.startswith(prefixes)}
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith(prefixes)}
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} in the file, {tuple(s)} in the model"
              for k, s in expected.items() if k in sd and sd[k].shape != s]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = "; ".join(items[:3]) + ("; ..." if len(items) > 3 else "")
                parts.append(f"{len(items)} {what} ({shown})")
        raise WeightsFileError(
            f"pretrained weights file '{path}' ({fmt} format) does not match timm backbone '{backbone}': "
            + ", ".join(parts) + f". Expected weights of that network in one of the formats {', '.join(FORMATS)} "
            "(README 'Pretrained encoders').")
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if sha256 else ""
    return Verified(path, backbone, fmt, len(sd), dropped, digest, sd)

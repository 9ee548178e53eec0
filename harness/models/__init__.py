"""Segmentation models on timm backbones: the `MODELS` registry and `create_segmentor` (timm style).

    model = create_segmentor("daformer", backbone="pvt_v2_b0", num_classes=19, embed_dim=64)
    feats = model.encode(x); logits = model.decode(feats); full = model(x)

Each entry is a tiny factory naming `module:Class`, imported only when used, so `from harness.models
import MODELS` (config validation, `udabench --help`) never imports torch or timm. Architecture options
are keyword arguments validated by the architecture's `Options` (an unknown one names the valid keys;
`check_options` validates without building). A new architecture is one module with a `Segmentor`
subclass plus one entry below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.models.base import Segmentor

MODELS = Registry("model architecture")
register_model = MODELS.register

# The backbone each architecture uses at paper scale (and by default).
PAPER_BACKBONES: dict[str, str] = {
    "deeplabv2": "resnet101c",  # mmseg ResNetV1c, DAFormer's and MIC's DeepLab-v2 (deep stem)
    "daformer": "pvt_v2_b5",
    "segformer": "pvt_v2_b5",
    "hrda": "pvt_v2_b5",        # HRDA around DAFormer (its `base` option), as in the official configuration
}


def _lazy(target: str, doc: str) -> Callable[..., Segmentor]:
    """A registry entry that imports `module:Class` only when called (or when its class is asked for)."""

    def factory(**kwargs: Any) -> Segmentor:
        return segmentor_class(factory)(**kwargs)

    factory.__doc__ = doc
    factory.target = target  # type: ignore[attr-defined]
    return factory


def segmentor_class(entry: str | Callable[..., Segmentor]) -> type[Segmentor]:
    """The Segmentor subclass of an architecture name (or registry entry); imports its module."""
    entry = MODELS.get(entry) if isinstance(entry, str) else entry
    module, name = entry.target.split(":")  # type: ignore[attr-defined]
    return getattr(importlib.import_module(module), name)


register_model("deeplabv2")(_lazy(
    "harness.models.deeplabv2:DeepLabV2",
    "DeepLab-v2: dilated ResNet (output stride 8) + ASPP classifier (6, 12, 18, 24), summed."))
register_model("daformer")(_lazy(
    "harness.models.daformer:DAFormer",
    "DAFormer: hierarchical encoder (PVTv2) + context-aware fusion head (separable ASPP 1, 6, 12, 18)."))
register_model("segformer")(_lazy(
    "harness.models.segformer:SegFormer",
    "SegFormer: hierarchical encoder (PVTv2) + all-MLP head."))
register_model("hrda")(_lazy(
    "harness.models.hrda:HRDA",
    "HRDA: a base segmentor (DAFormer) on a context view at half resolution and a detail crop, fused by a "
    "learned scale attention."))


def check_options(arch: str, options: dict[str, Any]) -> None:
    """Validate `model.options` for `arch` without building anything (raises ConfigError naming the
    field and the valid keys). Imports torch (the architecture's module), not timm."""
    segmentor_class(arch).parse_options(options)


def create_segmentor(arch: str, backbone: str | None = None, num_classes: int = 19,
                     pretrained: str | Path | None = None, **options: Any) -> Segmentor:
    """Build a registered architecture. `backbone`: a timm model name (default: the paper's);
    `pretrained`: a local weights file for the encoder (None = random init; never downloads)."""
    factory = MODELS.get(arch)
    backbone = backbone or PAPER_BACKBONES.get(arch)
    if backbone is None:
        raise ValueError(f"model architecture '{arch}' has no default backbone; pass backbone=")
    return factory(backbone=backbone, num_classes=num_classes, pretrained=pretrained, **options)


def describe(arch: str) -> str:
    """The one-line description of an architecture (its factory's docstring)."""
    return (MODELS.get(arch).__doc__ or "").strip().splitlines()[0]

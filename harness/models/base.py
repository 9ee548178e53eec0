"""The segmentor interface every architecture implements, and timm encoders with local weights.

A `Segmentor` is a timm `features_only` encoder plus a decode head:

- `encode(x) -> list[Tensor]`: stage features, shallow to deep (`feature_channels`, `feature_strides`);
- `decode(features) -> logits` at the decoder's resolution (`decoder_stride`);
- `forward(x)`: `decode(encode(x))` upsampled (bilinear, align_corners=False) to the input size.

Auxiliary tasks rely on the split (MFM feeds rebuilt features to `decode`, contrastive reads `encode`).
Inputs are normalised float images (the engine normalises on the device).

Pretrained encoders come from a local file only, never from a hub: `harness.models.weights` reads
the formats users have (timm/torchvision, SegFormer's MiT, mmseg's ResNetV1c) and checks them against
the backbone before timm loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from harness.config import ConfigError
from harness.registry import UnknownNameError, closest


class Segmentor(nn.Module):
    """Encoder (timm, features_only) + decode head. Subclasses define `Options` and build `head`."""

    arch: ClassVar[str] = "segmentor"
    # forward(x) is decode(encode(x)) resized to x: a host may split the pass to keep the features (the
    # feature distance, a task reusing them). False for HRDA (two views of x, fused): hosts call seg_loss
    single_view: ClassVar[bool] = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        encoder_options: dict[str, Any] = Field(default_factory=dict)  # extra timm kwargs, e.g. drop_path_rate

    def __init__(self, encoder: nn.Module, head: nn.Module, backbone: str, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.backbone = backbone
        self.num_classes = num_classes
        info = encoder.feature_info
        self.feature_channels: list[int] = list(info.channels())
        self.feature_strides: list[int] = list(info.reduction())

    @property
    def decoder_stride(self) -> int:
        """Input pixels per logit of `decode` (the resolution of the shallowest stage the head uses)."""
        return self.feature_strides[0]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(list(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode(self.encode(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def seg_loss(self, x: torch.Tensor, criterion) -> torch.Tensor:
        """The segmentation loss of `x`: `criterion(logits, box)` scores logits at the input size
        (`box` None: they cover the whole label) or, for a model that also predicts a crop (HRDA's
        detail crop), logits covering `label[..., y1:y2, x1:x2]` of `box` = (y1, y2, x1, x2)."""
        return criterion(self(x), None)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Encoder and decoder parameters (disjoint, together every parameter of the model)."""
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.head.parameters())}

    @classmethod
    def check_crop(cls, options: dict[str, Any], crop: tuple[int, int]) -> str | None:
        """What is wrong with training crops of `crop` (height, width) for this architecture with
        `options`, or None (checked with the config, before a run starts)."""
        return None

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Options:
        """Validate architecture options; an unknown or mistyped one names the field and the valid keys."""
        try:
            return cls.Options.model_validate(options)
        except ValidationError as e:
            from harness.config import format_validation_error

            raise ConfigError(format_validation_error(e, f"model.options ({cls.arch})", cls.Options)) from None


# --------------------------------------------------------------------------------------------------
# timm encoders

def check_backbone(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise UnknownNameError(
            f"unknown timm backbone '{name}'{closest(name, timm.list_models())}; "
            "any name from timm.list_models() with features_only support works")


def create_encoder(backbone: str, out_indices: tuple[int, ...], pretrained: str | Path | None = None,
                   **timm_kwargs: Any) -> nn.Module:
    """A timm `features_only` encoder; `pretrained` is a local weights file (checked, never downloaded)."""
    import timm

    check_backbone(backbone)
    state_dict = None
    if pretrained is not None:
        from harness.models.weights import load_backbone_weights

        state_dict = load_backbone_weights(pretrained, backbone, **timm_kwargs)
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=tuple(out_indices), **timm_kwargs)
    if state_dict is not None:
        # timm maps full-model keys to the feature wrapper's; strictness was checked above.
        kwargs.update(pretrained=True, pretrained_strict=False,
                      pretrained_cfg_overlay=dict(state_dict=state_dict, file=None, url=None, hf_hub_id=None))
    try:
        return timm.create_model(backbone, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, IndexError) as e:
        shown = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
        raise ConfigError(
            f"backbone '{backbone}': timm cannot build it as a feature extractor with {shown}: "
            f"{type(e).__name__}: {e}") from None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

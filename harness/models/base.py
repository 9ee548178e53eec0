"""The segmentor interface every architecture implements, and timm encoders with local weights.

A `Segmentor` is a timm `features_only` encoder plus a decode head:

- `encode(x) -> list[Tensor]`: stage features, shallow to deep (`feature_channels`, `feature_strides`);
- `decode(features) -> logits` at the decoder's resolution (`decoder_stride`);
- `forward(x)`: `decode(encode(x))` upsampled (bilinear, align_corners=False) to the input size.

The hosts and the auxiliary tasks (methods/) call the model only through the passes below, on every
architecture: `Segmentor` defines them for a single-view model (one pass of the whole input, the split
above) and a multi-view model overrides them (HRDA, harness/models/hrda.py: a context view and a detail
crop, fused), so no host or task asks which kind it has:

- `predict(x)`: inference-path logits at the input size whatever the modules' training flags (the
  teacher's pseudo-labels);
- `view_features(x)`: the one view's encoder stages that the feature distance and the one-view tasks read
  (contrastive, mim recon); `view_stages(features)` picks them out of a training pass's features;
- `encode_views(x, box)` / `views_loss(features, criterion, size)`: the encoder half and the decoder half
  with the loss of a training pass, split so that a host can keep the features for a task that reuses
  them and a task can rebuild them (MFM); `detail_box(h, w)` draws the crop a pass encodes on its own
  (None: none), for a task that must know it before the pass (MIC's mask);
- `seg_loss(x, criterion, box)`: the whole training pass and its loss.

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

    # ----------------------------------------------------------------------------------------------
    # the passes the hosts and the tasks call (the module docstring); a single view's, HRDA overrides them.
    # `criterion(logits, box)` scores logits that cover the whole label at its size (`box` None) or, for a
    # model that also predicts a crop (HRDA's detail crop), `label[..., y1:y2, x1:x2]` of `box` =
    # (y1, y2, x1, x2) (methods/_common.py `crop` cuts a label or weight to it).

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference-path logits at the input size, whatever the modules' training flags (the teacher's
        pseudo-labels, also when its BatchNorm runs on batch statistics): `self(x)`."""
        return self(x)

    def view_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder stages of the one view of `x` that the feature distance and the one-view tasks
        (contrastive, mim recon) read: `encode(x)`, the stages `encode_views(x)` also returns."""
        return self.encode(x)

    def encode_views(self, x: torch.Tensor, box: tuple[int, int, int, int] | None = None) -> Any:
        """The encoder half of a training pass of `x`: `encode(x)` (a multi-view model returns its views,
        each a list of stages, with the crop of `box`, or one it draws, when it has one). A host keeps it
        for a task that reuses the pass (methods/base.py); `views_loss` decodes it."""
        return self.encode(x)

    def view_stages(self, features: Any) -> list[torch.Tensor]:
        """The stages of a training pass's `features` (of `encode_views`) that `view_features` of the same
        input gives (the feature distance and a task's `"source_features"` read the host's pass there):
        a single view's own."""
        return features

    def views_loss(self, features: Any, criterion, size: tuple[int, int]) -> torch.Tensor:
        """The decoder half and the loss of a training pass on `features` (of `encode_views`, possibly
        rebuilt by a task): `criterion(logits, None)` of `decode(features)` resized (bilinear,
        align_corners=False) to `size`, the label's size. With `size` the input's, the logits are
        `self(x)`'s to the bit."""
        logits = F.interpolate(self.decode(features), size=size, mode="bilinear", align_corners=False)
        return criterion(logits, None)

    def detail_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """The crop a training pass of a `height` x `width` input encodes on its own, drawn now (to give
        `encode_views` / `seg_loss` as `box`): None, a single view has none."""
        return None

    def seg_loss(self, x: torch.Tensor, criterion, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """The loss of a whole training pass of `x`: `criterion(self(x), None)` (`box`, of `detail_box`, is
        None for a single view)."""
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

"""Generation parameters: params.yaml's `synth:` group (`SynthParams`, read by `load_params`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.data.synthetic.styles import DEFAULT_GAP, DOMAINS

GENERATOR_VERSION = "udabench-synthetic/1"


class SynthParams(BaseModel):
    """What `udabench data synth` generates: params.yaml's `synth` group."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    width: int = Field(256, ge=32, le=4096)
    height: int = Field(128, ge=16, le=4096)
    splits: dict[str, dict[str, int]] = Field(default_factory=lambda: {
        "source": {"train": 1000},
        "target": {"train": 1000, "val": 200},
        "target-fog": {"train": 500, "val": 200},
        "target-night": {"train": 500, "val": 200},
    })
    gap: float = Field(DEFAULT_GAP, ge=0, le=1)  # target = mix_styles(source, camera-like, gap)
    style: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-domain DomainStyle overrides

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for domain, splits in v.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
            for split, n in splits.items():
                if not split.replace("_", "").isalnum():
                    raise ValueError(f"{domain}.{split}: a split name must be alphanumeric")
                if n < 0:
                    raise ValueError(f"{domain}.{split}: image count must be >= 0 (got {n})")
        return v


def load_params(path: str | Path, group: str = "synth") -> SynthParams:
    """Read the `synth` group of a params file (e.g. params.yaml); errors name the file and field."""
    from harness.config import ConfigError, format_validation_error, load_yaml

    data = load_yaml(path)
    if group not in data:
        raise ConfigError(f"{path}: no '{group}:' group (expected keys: {', '.join(SynthParams.model_fields)})")
    try:
        return SynthParams.model_validate(data[group] or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{path}: {group}", SynthParams)) from None

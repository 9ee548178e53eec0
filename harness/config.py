"""Typed run configuration (pydantic), YAML loading with `base:` inheritance, and `--set` overrides.

A run config file may name a `base:` file (relative to itself); the variant's keys are merged over the
base, so a variant changes one field (detectron2 LazyConfig style). Unknown or mistyped keys are
rejected with the closest valid name (nanoGPT style); every error names the file and the field.

This module is the schema only (it imports nothing above the foundation). Loading a run config and
checking its registry names (architecture, host, auxiliary tasks) is `harness.engine.resolve`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.registry import closest


class ConfigError(ValueError):
    """A bad config: the message names the file (if any), the field path and what was expected."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    arch: str = "deeplabv2"
    backbone: str = "resnet18"
    pretrained: str | None = None          # local weights file (.pth/.safetensors); None = random init
    options: dict[str, Any] = Field(default_factory=dict)  # architecture-specific keyword arguments


class DatasetConfig(Strict):
    name: str = "synthetic"                # synthetic | gta5 | synthia | cityscapes | acdc
    root: str = "datasets/synthetic"
    domain: str | None = "source"          # synthetic: source | target | target-fog | target-night
    split: str = "train"
    resize: tuple[int, int] | None = None  # (width, height) before cropping; None = keep
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Strict):
    source: DatasetConfig = Field(default_factory=DatasetConfig)
    target: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(domain="target"))
    val: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(domain="target", split="val"))
    crop: tuple[int, int] = (128, 128)     # (height, width) random training crop
    flip: float = 0.5
    batch_size: int = Field(2, ge=1)
    workers: int = Field(0, ge=0)
    rare_class_sampling: bool = False
    rcs_temperature: float = Field(0.01, gt=0)
    rcs_min_pixels: int = Field(3000, ge=0)


class AuxConfig(Strict):
    """One auxiliary task: its weight (lambda), lr multiplier, start iteration and task options."""

    weight: float = Field(1.0, ge=0)
    lr_mult: float = Field(10.0, gt=0)
    start_iter: int = Field(0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


class MethodConfig(Strict):
    host: str = "dacs"                    # source_only | dacs | oracle
    ema_alpha: float = Field(0.99, ge=0, le=1)
    pseudo_threshold: float = Field(0.968, ge=0, le=1)
    mix: Literal["classmix", "none"] = "classmix"
    color_jitter: float = Field(0.2, ge=0)
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    aux: dict[str, AuxConfig] = Field(default_factory=dict)  # task name -> its config


class OptimConfig(Strict):
    lr: float = Field(6e-5, gt=0)
    head_lr_mult: float = Field(10.0, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None


class ScheduleConfig(Strict):
    iterations: int = Field(40000, ge=1)
    warmup: int = Field(1500, ge=0)
    warmup_ratio: float = Field(1e-6, ge=0, le=1)
    power: float = Field(1.0, ge=0)


class EvalConfig(Strict):
    interval: int = Field(4000, ge=1)      # evaluate every `interval` iterations and at the end
    mode: Literal["whole", "slide"] = "whole"
    crop: tuple[int, int] | None = None    # sliding window (height, width)
    stride: tuple[int, int] | None = None
    max_images: int | None = None          # cap the validation set (smoke runs)
    protocol: Literal["19", "16", "13"] = "19"


class RunConfig(Strict):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    amp: bool = True                       # mixed precision, CUDA only
    cudnn_benchmark: bool = False          # False keeps CUDA runs deterministic
    threads: int | None = None             # torch CPU threads; None = leave as is
    checkpoint_interval: int | None = None  # save every N iterations (and always at the end)
    output: str = "runs/run"
    log_interval: int = Field(10, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
            raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Hash of the resolved config, without the fields that do not change results."""
        d = self.to_dict()
        for k in ("name", "output", "log_interval", "device", "threads", "checkpoint_interval"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# loading, merging, overrides

def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); expected YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving `base:` (a path relative to the file) recursively."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file path, got {base!r}")
    return deep_merge(load_raw(path.parent / base, _seen + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. schedule.iterations=100")
    key, value = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _known_fields(model: type[BaseModel], path: list[str]) -> list[str] | None:
    """The valid field names at `path` of the config schema (None where the schema is free-form)."""
    cls: Any = model
    for part in path:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            cls = args[-1]  # dict[str, Model]: skip the key
            continue
        else:
            return None
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return None


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc) or "<top>"
        if e["type"] == "extra_forbidden":
            valid = _known_fields(model, loc[:-1]) or []
            msg = f"unknown key{closest(loc[-1], valid)}"
            if valid and not closest(loc[-1], valid):
                msg += f"; valid keys: {', '.join(valid)}"
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def validate_schema(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """The typed config of `data`, checked against the schema only. Names that live in registries
    (architecture, host, auxiliary tasks) are checked a layer up, by `harness.engine.resolve.validate`."""
    # Merge over the full defaults first, so a partial section (`data.val.root=x`) keeps the defaults
    # of that section (val: target/val) rather than the generic defaults of its type.
    if isinstance(data, dict):
        data = deep_merge(RunConfig().to_dict(), data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, RunConfig)) from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

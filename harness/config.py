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
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

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
    resize: tuple[PositiveInt, PositiveInt] | None = None  # (width, height) before cropping; None = keep
    # resize as mmseg's Resize(img_scale=resize, keep_ratio=True): scale the image so that its long side is at
    # most max(resize) and its short side at most min(resize) (GTA 1914x1052 -> 1280x704); False: stretch to it
    keep_ratio: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Strict):
    source: DatasetConfig = Field(default_factory=DatasetConfig)
    target: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(domain="target"))
    val: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(domain="target", split="val"))
    crop: tuple[PositiveInt, PositiveInt] = (128, 128)  # (height, width) random training crop, within the image
    flip: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(2, ge=1)
    workers: int = Field(0, ge=0)
    rare_class_sampling: bool = False
    rcs_temperature: float = Field(0.01, gt=0)
    rcs_min_pixels: int = Field(3000, ge=0)
    # rare-class sampling re-draws the crop (up to 10 times) until it holds more than
    # rcs_min_pixels * rcs_min_crop_ratio pixels of the sampled class (DAFormer); 0 = one crop, no re-draw
    rcs_min_crop_ratio: float = Field(0.0, ge=0)
    # source crops re-drawn (up to 10 times) while one class covers cat_max_ratio or more of the crop's
    # labelled pixels (mmseg RandomCrop); 1 = no check
    source_cat_max_ratio: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        for split in ("source", "target"):
            resize = getattr(self, split).resize
            if resize is not None and (self.crop[0] > resize[1] or self.crop[1] > resize[0]):
                raise ValueError(f"crop (height, width) {tuple(self.crop)} is larger than data.{split}.resize "
                                 f"(width, height) {tuple(resize)}; a crop must lie within the image")
        return self


class AuxConfig(Strict):
    """One auxiliary task: its weight (lambda), lr multiplier, start iteration and task options."""

    weight: float = Field(1.0, ge=0)
    lr_mult: float = Field(10.0, gt=0)
    start_iter: int = Field(0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


# DAFormer's feature-distance classes (trainIds): traffic light, traffic sign, person, rider, car, truck, bus,
# train, motorcycle, bicycle (configs/_base_/uda/dacs_a999_fdthings.py)
FD_THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


class FeatureDistanceConfig(Strict):
    """ImageNet feature distance (DAFormer): L2 distance between the student's last encoder stage and a
    frozen copy of the initial (pretrained) encoder on source images, on cells of `classes`."""

    weight: float = Field(0.0, ge=0)      # lambda; 0 = off
    classes: tuple[Annotated[int, Field(ge=0, lt=19)], ...] | None = FD_THING_CLASSES  # None = every cell
    min_ratio: float = Field(0.75, ge=0, le=1)  # a cell's class must cover this share of its pixels


class MethodConfig(Strict):
    host: str = "dacs"                    # source_only | dacs | oracle
    ema_alpha: float = Field(0.99, ge=0, le=1)
    pseudo_threshold: float = Field(0.968, ge=0, le=1)
    # pseudo-label crop: the weight of the top/bottom rows of each target crop set to 0 (DAFormer)
    pseudo_weight_ignore_top: int = Field(0, ge=0)
    pseudo_weight_ignore_bottom: int = Field(0, ge=0)
    # pseudo-label margins of the image (HRDA's crop_pseudo_margins): (top, bottom, left, right) pixels of each
    # target image as loaded (after data.target.resize), cut and flipped with the training crop: a crop gets
    # weight 0 on the part of them it holds, an interior crop none; None = off
    pseudo_image_margins: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt, NonNegativeInt] | None = None
    # the EMA teacher's BatchNorm: `running` = eval mode with the EMA of the student's buffers (udabench's
    # small scales); `batch` = statistics of the target batch, dropout/drop-path off, EMA of parameters only
    teacher_bn: Literal["running", "batch"] = "running"
    fd: FeatureDistanceConfig = Field(default_factory=FeatureDistanceConfig)
    # source cross-entropy: mean over labelled pixels (`valid`) or over all pixels, ignored ones 0 (`all`, mmseg)
    source_ce_mean: Literal["valid", "all"] = "valid"
    mix: Literal["classmix", "none"] = "classmix"
    # ClassMix classes: half of each image's own classes (`image`), or half of the classes of the whole
    # source batch, ignore included (`batch`, DAFormer's get_class_masks)
    classmix_classes: Literal["image", "batch"] = "image"
    color_jitter: float = Field(0.2, ge=0)
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    aux: dict[str, AuxConfig] = Field(default_factory=dict)  # task name -> its config


class OptimConfig(Strict):
    lr: float = Field(6e-5, gt=0)
    head_lr_mult: float = Field(10.0, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    grad_clip: float | None = Field(None, gt=0)
    # weight decay x this on the encoder's normalisation parameters (LayerNorm/BatchNorm/GroupNorm weights
    # and biases); DAFormer/MIC on MiT: 0 (paramwise_cfg custom_keys norm decay_mult=0)
    encoder_norm_decay_mult: float = Field(1.0, ge=0)


class ScheduleConfig(Strict):
    iterations: int = Field(40000, ge=1)
    warmup: int = Field(1500, ge=0)
    warmup_ratio: float = Field(1e-6, ge=0, le=1)
    power: float = Field(1.0, ge=0)


class EvalConfig(Strict):
    interval: int = Field(4000, ge=1)      # evaluate every `interval` iterations and at the end
    mode: Literal["whole", "slide"] = "whole"
    crop: tuple[PositiveInt, PositiveInt] | None = None    # sliding window (height, width)
    stride: tuple[PositiveInt, PositiveInt] | None = None  # at most the crop in each direction
    max_images: int | None = Field(None, ge=1)  # cap the validation set (smoke runs)
    # images per forward pass (same-size images are stacked); None: 1 on CPU (the recorded results' way),
    # 4 on CUDA (harness.engine.runtime)
    batch_size: int | None = Field(None, ge=1)
    protocol: Literal["19", "16", "13"] = "19"
    # score against labels at their stored resolution, logits upsampled to them (mmseg); False: labels
    # resized with the image (data.val.resize)
    full_resolution_labels: bool = False
    # score against labels resized (nearest) to this (width, height), logits resized to them, whatever the
    # input's size: a model fed larger images (HRDA at the small scales) scored on the same labels
    label_size: tuple[PositiveInt, PositiveInt] | None = None

    @model_validator(mode="after")
    def _window(self) -> EvalConfig:
        if self.label_size is not None and self.full_resolution_labels:
            raise ValueError("label_size and full_resolution_labels both choose the labels' size: set one")
        if self.mode == "slide" and self.crop is None:
            raise ValueError("mode 'slide' needs crop (height, width) of the sliding window")
        if self.crop is not None and self.stride is not None and (
                self.stride[0] > self.crop[0] or self.stride[1] > self.crop[1]):
            raise ValueError(f"stride {tuple(self.stride)} larger than crop {tuple(self.crop)} would leave "
                             "pixels unpredicted")
        return self


# Label-free model-selection criteria (harness/engine/criteria.py, where each is defined and its source
# cited): name -> which value is better. Logged at every evaluation as `criterion/<name>`.
CRITERIA: dict[str, Literal["lower", "higher"]] = {
    "entropy": "lower", "im": "higher", "teacher_agreement": "higher", "consistency": "higher"}


class SelectionConfig(Strict):
    """What a run logs for choosing a checkpoint after the fact without target labels (issue 19). Result-
    neutral: left out of `RunConfig.hash()`, and free to change on resume."""

    # computed at every evaluation on the first `images` target *training* images (never their labels);
    # teacher_agreement only for hosts with an EMA teacher; 0 images = no criteria
    criteria: tuple[Literal["entropy", "im", "teacher_agreement", "consistency"], ...] = tuple(CRITERIA)
    images: int = Field(16, ge=0)


class RunConfig(Strict):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy seeds are 32-bit
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    amp: bool = True                       # mixed precision, CUDA only (CPU runs train in fp32)
    # autocast dtype on CUDA: auto = bf16 where the GPU has it natively (compute capability 8+, no
    # GradScaler), else fp16 with GradScaler
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    cudnn_benchmark: bool = True           # cuDNN picks the fastest kernels (CUDA; off under `deterministic`)
    # CUDA: cudnn.deterministic, no benchmark, torch.use_deterministic_algorithms (slower, and bilinear
    # upsampling's backward has no deterministic CUDA kernel). CPU runs are bit-for-bit deterministic anyway.
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None = leave as is
    checkpoint_interval: int | None = Field(None, ge=1)  # save every N iterations (and always at the end)
    # the evaluated model's weights at each evaluation, `checkpoint/iter_<iteration>.pt` beside checkpoint.pt
    # (loadable by `udabench eval`): `last` = none (checkpoint.pt only), `all`, or the N most recent
    checkpoint_keep: Literal["last", "all"] | PositiveInt = "last"
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    output: str = "runs/run"
    log_interval: int = Field(10, ge=1)  # progress bar and the dense train/ logs (on_log) every N iterations

    @model_validator(mode="after")
    def _pseudo_crop_fits(self) -> RunConfig:
        m = self.method
        if m.pseudo_weight_ignore_top + m.pseudo_weight_ignore_bottom >= self.data.crop[0]:
            raise ValueError(f"method.pseudo_weight_ignore_top + pseudo_weight_ignore_bottom "
                             f"({m.pseudo_weight_ignore_top} + {m.pseudo_weight_ignore_bottom}) would ignore every "
                             f"row of the {self.data.crop[0]}-pixel-high training crop")
        if m.pseudo_image_margins is not None and (m.pseudo_weight_ignore_top or m.pseudo_weight_ignore_bottom):
            raise ValueError(f"method.pseudo_image_margins {list(m.pseudo_image_margins)} (the image's margins, "
                             f"HRDA) and method.pseudo_weight_ignore_top / _bottom ({m.pseudo_weight_ignore_top} / "
                             f"{m.pseudo_weight_ignore_bottom}, each crop's rows, DAFormer) are two pseudo-label "
                             "crops; set the crop's rows to 0 or the margins to null (the official dacs.py "
                             "asserts the same)")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
            raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Hash of the resolved config, without the fields that do not change results (and without the
        LATER_FIELDS still at their defaults, so older configs keep their hashes)."""
        d = without_later_defaults(self.to_dict())
        for k in ("name", "output", "log_interval", "device", "threads", "checkpoint_interval", "deterministic",
                  "checkpoint_keep", "selection"):
            d.pop(k, None)
        # which kernels compute the run, not what it computes: hashed as its default before issue 17
        # (false), so the hashes recorded before stay valid
        d["cudnn_benchmark"] = False
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Fields added after runs were recorded (the paper-scale recipe, issue 17). While at their default (the
# behaviour before they existed) they are left out of `RunConfig.hash()` and of the checkpoint's config
# comparison, so a config that does not use them keeps its hash: MLflow runs, report selections and
# `study resume` still recognise the runs made before. Append a field here when adding one with a neutral
# default.
LATER_FIELDS: tuple[tuple[str, ...], ...] = (
    ("data", "source", "keep_ratio"), ("data", "target", "keep_ratio"), ("data", "val", "keep_ratio"),
    ("data", "rcs_min_crop_ratio"), ("data", "source_cat_max_ratio"),
    ("method", "pseudo_weight_ignore_top"), ("method", "pseudo_weight_ignore_bottom"),
    ("method", "pseudo_image_margins"),
    ("method", "teacher_bn"), ("method", "fd"), ("method", "source_ce_mean"), ("method", "classmix_classes"),
    ("optim", "encoder_norm_decay_mult"), ("eval", "full_resolution_labels"), ("eval", "label_size"),
    ("amp_dtype",), ("eval", "batch_size"),
)


def without_later_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict `d` (RunConfig.to_dict() form) without the LATER_FIELDS at their defaults."""
    d = copy.deepcopy(d)
    if not _DEFAULTS_JSON:
        _DEFAULTS_JSON.update(RunConfig().to_dict())
    defaults = _DEFAULTS_JSON
    for path in LATER_FIELDS:
        node, default = d, defaults
        for key in path[:-1]:
            node, default = node.get(key) if isinstance(node, dict) else None, default[key]
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == default[path[-1]]:
            del node[path[-1]]
    return d


_DEFAULTS_JSON: dict[str, Any] = {}  # RunConfig().to_dict(), filled on first use


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


# --- YAML as udabench reads it -------------------------------------------------------------------
# PyYAML implements YAML 1.1: `010` is octal 8, `1e-5` a string, `yes`/`on` booleans, `1:20` the
# number 80, and a repeated key silently keeps the last value. Config files and `--set` values are
# read with YAML 1.2's core schema instead (`010` -> 10, `1e-5` -> 0.00001, `yes` -> 'yes'), a
# repeated key is an error naming both lines, and aliases may not expand a document beyond
# MAX_YAML_VALUES values (a 1 KB file of nested aliases would otherwise expand to billions).

MAX_YAML_VALUES = 100_000

_INT12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT12 = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                      r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_BOOL12 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars and no duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers
                if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]}, again on line {line}); "
                    "a key may appear once in a mapping", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        text = self.construct_scalar(node).lower()
        if text.endswith((".inf", ".nan")):
            return float(text.replace(".", ""))
        return float(text)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return self.construct_scalar(node).lower() == "true"


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL12, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT12, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT12, list("-+0123456789."))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _Loader.construct_yaml_bool)


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """How many values the document has once every alias is expanded (a shared node counts once per use)."""
    key = id(node)
    if key in open_:
        mark = node.start_mark
        raise ConfigError(f"line {mark.line + 1}, column {mark.column + 1}: a recursive alias (a value that "
                          "contains itself)")
    if key not in memo:
        open_.add(key)
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(n, memo, open_) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo, open_) + _expanded_size(v, memo, open_)
                                for k, v in node.value)
        else:
            memo[key] = 1
        open_.discard(key)
    return memo[key]


def _yaml_message(e: yaml.YAMLError) -> str:
    """One line: where and what (PyYAML's own message spans several lines with a source excerpt)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark else what
    return " ".join(str(e).split())


def parse_yaml(text: str, source: str) -> Any:
    """A YAML document as udabench reads it (see above); ConfigError naming `source` otherwise."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_VALUES:
            raise ConfigError(f"expands to {size:,} values through YAML aliases (at most {MAX_YAML_VALUES:,}); "
                              "write the values out or use fewer nested aliases")
        return loader.construct_document(node)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_message(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); expected YAML") from None
    data = parse_yaml(text, str(path)) or {}
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
        parsed = parse_yaml(value, f"override '{text}'") if value != "" else ""
    except ConfigError as e:
        if "expands to" in str(e) or "duplicate key" in str(e) or "recursive alias" in str(e):
            raise
        parsed = value  # not YAML: the text itself (a path with a colon, say)
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


def raw_arch(data: Any) -> str | None:
    """The architecture a raw (not yet validated) config names, or the default one; None when the
    config is malformed there (validation names the problem later)."""
    model = data.get("model", {}) if isinstance(data, dict) else None
    arch = model.get("arch", RunConfig().model.arch) if isinstance(model, dict) else None
    return arch if isinstance(arch, str) else None


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

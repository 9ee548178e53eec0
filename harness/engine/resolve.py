"""A run config as the engine runs it: the schema (`harness.config`) plus the names that live in
registries (model architecture, host method, auxiliary tasks and their options), each checked with the
list of valid names.

    cfg = load_config("studies/configs/daformer.yaml", ["method.aux.mfm.weight=0.5"])

`harness.config` cannot check these names itself: the registries live in `harness.models` and
`methods`, which import the config. This module is the first layer that sees all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    deep_merge,
    format_validation_error,
    load_raw,
    validate_schema,
)
from harness.models import MODELS
from harness.registry import UnknownNameError


def validate(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """The RunConfig of `data`: schema, then registry names; errors name `source` and the field."""
    cfg = validate_schema(data, source)
    check_names(cfg, source)
    return cfg


def check_names(cfg: RunConfig, source: str) -> None:
    """Names that live in registries (model, method, aux tasks) are checked here, with valid lists."""
    from methods import AUX_TASKS, HOSTS  # imports torch: only when a config is checked

    try:
        MODELS.get(cfg.model.arch)
    except UnknownNameError as e:
        raise ConfigError(f"{source}: model.arch: {e}") from None
    from harness.models import segmentor_class

    model = segmentor_class(cfg.model.arch)
    problem = model.check_crop(cfg.model.options, tuple(cfg.data.crop))
    if problem:
        raise ConfigError(f"{source}: {problem}")
    try:
        HOSTS.get(cfg.method.host)
    except UnknownNameError as e:
        raise ConfigError(f"{source}: method.host: {e}") from None
    for name, aux in cfg.method.aux.items():
        try:
            task = AUX_TASKS.get(name)
        except UnknownNameError as e:
            raise ConfigError(f"{source}: method.aux.{name}: {e}") from None
        if getattr(task, "needs_pseudo_labels", False) and not HOSTS.get(cfg.method.host).provides_pseudo_labels:
            raise ConfigError(
                f"{source}: method.aux.{name}: needs the teacher's pseudo-labels, which host "
                f"'{cfg.method.host}' does not provide; use a self-training host such as 'dacs'")
        options_model = getattr(task, "Options", None)
        if options_model is not None:
            try:
                options_model.model_validate(aux.options)
            except ValidationError as e:
                raise ConfigError(format_validation_error(
                    e, f"{source}: method.aux.{name}.options", options_model)) from None


class RecipeWarning(UserWarning):
    """A config that runs but contradicts the recipe it borrows from (see `recipe_warnings`)."""


def recipe_warnings(cfg: RunConfig) -> list[str]:
    """What in `cfg` runs but is likely not what the user meant, one sentence each (the engine warns
    with them at start-up; a study's check before Ray starts prints them once)."""
    out = []
    if cfg.method.fd.weight > 0 and cfg.model.pretrained is None:
        out.append(
            f"method.fd.weight is {cfg.method.fd.weight:g} but model.pretrained is null: the ImageNet feature "
            "distance pulls the encoder back towards its random initialisation, not towards ImageNet features; "
            "set model.pretrained to a weights file (`udabench weights list`) or method.fd.weight=0")
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                extra: dict[str, Any] | None = None) -> RunConfig:
    """Load a run config file (or the defaults), merge `extra` (e.g. a scale preset), apply overrides."""
    data = load_raw(path) if path is not None else {}
    if extra:
        data = deep_merge(data, extra)
    data = apply_overrides(data, overrides)
    source = str(path) if path else "<defaults>"
    if overrides:  # a bad value may come from the file or from an override: name both
        source += " with " + " ".join(f"--set {o}" for o in overrides)
    return validate(data, source)

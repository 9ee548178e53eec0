"""Study files: what a study varies, validated in full before anything runs, and expanded into trials.

A study file (`studies/*.yaml`) names a base run config and what varies:

    name: mask_ratio                     # the MLflow experiment (default: the file name)
    description: What does ...?          # what the study answers (required)
    expected_runtime:                    # per scale; measured, with the command, or a TODO
      smoke: "TODO(lead): measure with `udabench study run studies/mask_ratio.yaml --scale smoke`"
    config: configs/dacs_deeplabv2.yaml  # base run config, relative to this file (`base:` chains)
    set:                                 # fixed overrides: dotted config paths (or nested mappings)
      method.aux.mfm.weight: 1.0
    axes:                                # axis name -> config path, or -> named variants (overlays)
      target:
        pixel: {method.aux.mim.options: {variant: recon, target: pixel}}
        feature: {method.aux.mfm: {}}
    grid:                                # an ablation: the cartesian product of the axes
      mask_ratio: [0.1, 0.3, 0.5]
      seed: [0, 1, 2]
    # grid:                              # ... or a list of such blocks (same axes): the union of
    #   - {mask_ratio: [0.1, 0.3, 0.5], seed: [0, 1, 2]}    # their products, in file order (a
    #   - {mask_ratio: [0.3], seed: [3, 4]}                 # repeated point runs once)
    search:                              # ... or a search (Optuna through Ray Tune), not both
      metric: target_miou
      mode: max
      num_samples: 8
      seed: 0
      params:
        mask_ratio: {type: uniform, low: 0.1, high: 0.9}
    at_scale:                            # per scale, a smaller study where a scale cannot afford the
      cpu:                               # whole one: axis values replace the grid's (same axes, a
        grid: {mask_ratio: [0.1, 0.5]}   # subset of its values), or a search's sample count
        # search: {num_samples: 8}
    resources: {cpu: 1, gpu: 0}          # per trial (default: the scale's)
    max_concurrent: 2                    # at most this many trials at once (default: as resources allow)
    max_failures: 1                      # retries of a failed trial, from its last checkpoint

Axis names map to config paths explicitly: through the study's `axes:`, the alias table `AXES` below
(`mask_ratio` -> `method.aux.mfm.options.mask_ratio`, ...), the built-in `aux` axis (an auxiliary
task name or `none`), or a dotted config path used as the name (`optim.lr`).

A trial's config is, merged in this order: the base config, `set:`, the scale preset (with the
backbone of the trial's architecture), the trial's axis values, then command-line `--set` overrides.

This module is the file's schema and vocabulary (the axis aliases). The rest of the study package:
`fields` (what a config path names, in words), `trials` (a Study: its points expanded into trials),
`load` (`load_study`: every problem at once, each with its path in the file, e.g.
`grid.mask_ratio[2]: expected a number in [0, 1), got 1.2`; it never writes anything), `runner`,
`session`, `trainable` (running the trials under Ray Tune), `estimate` and `tracking` (MLflow).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.config import (
    ConfigError,
)

# Named axes -> config paths. A study may add or redefine axes under `axes:`.
AXES: dict[str, str] = {
    "arch": "model.arch",
    "backbone": "model.backbone",
    "host": "method.host",
    "seed": "seed",
    "lr": "optim.lr",
    "iterations": "schedule.iterations",
    "mask_ratio": "method.aux.mfm.options.mask_ratio",  # MFM's token mask ratio
    "preset": "method.aux.mfm.options.preset",          # Rebuilder size: tiny | small | base
    "lambda": "method.aux.mfm.weight",                  # MFM's loss weight
    "mic_mask_ratio": "method.aux.mim.options.mask_ratio",
    "mim_target": "method.aux.mim.options.target",
}
AUX_AXIS = "aux"   # built-in: value = an auxiliary task name (adds `method.aux.<name>: {}`) or "none"
NO_AUX = "none"

SEARCH_TYPES = ("uniform", "loguniform", "randint", "choice")
METRICS = ("target_miou", "target_miou16", "target_miou13", "pixel_acc", "throughput")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyError(ConfigError):
    """A bad study file; the message lists every problem, each with its path in the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchParam(_Strict):
    type: Literal["uniform", "loguniform", "randint", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None


class SearchSpec(_Strict):
    metric: str = "target_miou"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(ge=1)
    seed: int = 0
    params: dict[str, SearchParam] = Field(min_length=1)


class Resources(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class ScaleChanges(_Strict):
    """`at_scale.<scale>`: a smaller study at that scale (a subset of each grid axis, fewer samples)."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: dict[Literal["num_samples"], int] = Field(default_factory=dict)


class StudyFile(_Strict):
    name: str | None = None
    description: str = Field(min_length=1)
    expected_runtime: dict[str, str] = Field(default_factory=dict)
    config: str
    set: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, Any] = Field(default_factory=dict)
    grid: Any = Field(default_factory=dict)  # {axis: [values]} or a list of them (checked by _grid_blocks)
    search: SearchSpec | None = None
    at_scale: dict[str, ScaleChanges] = Field(default_factory=dict)
    resources: Resources | None = None
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)

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

`load_study` reports every problem at once, each with its path in the file
(`grid.mask_ratio[2]: expected a number in [0, 1), got 1.2`), and never writes anything.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import (
    AuxConfig,
    ConfigError,
    MethodConfig,
    RunConfig,
    apply_overrides,
    deep_merge,
    load_raw,
    parse_override,
)
from harness.config import validate as validate_config
from harness.registry import UnknownNameError, closest

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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyError(ConfigError):
    """A bad study file; the message lists every problem, each with its path in the file."""


# --------------------------------------------------------------------------------------------------
# the file's schema

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


# --------------------------------------------------------------------------------------------------
# paths, overlays and human messages

def loc_str(loc: tuple | list) -> str:
    """('grid', 'mask_ratio', 2) -> 'grid.mask_ratio[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def nest(path: str, value: Any) -> dict[str, Any]:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    out: Any = copy.deepcopy(value)
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def expand_dotted(d: dict[str, Any]) -> dict[str, Any]:
    """A mapping whose keys may be dotted paths -> a nested mapping (later keys merge over earlier)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = expand_dotted(value)
        out = deep_merge(out, nest(str(key), value))
    return out


def leaf_paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in d.items():
        p = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            paths.extend(leaf_paths(value, p))
        else:
            paths.append(p)
    return paths


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_field(info) -> str:
    """What a pydantic field accepts, in words: 'a number in [0, 1)', "one of 'tiny', 'small'"."""
    import annotated_types as at

    ann = info.annotation
    nullable = False
    args = get_args(ann)
    if args and type(None) in args and get_origin(ann) is not Literal:
        nullable = True
        rest = [a for a in args if a is not type(None)]
        ann = rest[0] if len(rest) == 1 else ann
    if get_origin(ann) is Literal:
        text = "one of " + ", ".join(repr(v) for v in get_args(ann))
    elif ann is bool:
        text = "true or false"
    elif ann is int:
        text = "an integer"
    elif ann is float:
        text = "a number"
    elif ann is str:
        text = "a string"
    elif get_origin(ann) is tuple:
        text = f"a list of {len(get_args(ann))} values" if Ellipsis not in get_args(ann) else "a list"
    else:
        text = "a valid value"
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, at.Ge):
            lo = ("[", m.ge)
        elif isinstance(m, at.Gt):
            lo = ("(", m.gt)
        elif isinstance(m, at.Le):
            hi = ("]", m.le)
        elif isinstance(m, at.Lt):
            hi = (")", m.lt)
    if lo and hi:
        text += f" in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    elif lo:
        text += f" {'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    elif hi:
        text += f" {'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return text + (" or null" if nullable else "")


def _model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in get_args(annotation):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def field_info(path: str):
    """The pydantic FieldInfo at a run-config path (including `method.aux.<task>.options.<x>`)."""
    parts = path.split(".")
    model: type[BaseModel] = RunConfig
    i = 0
    while i < len(parts):
        f = model.model_fields.get(parts[i])
        if f is None:
            return None
        if i == len(parts) - 1:
            return f
        if model is MethodConfig and parts[i] == "aux":
            model, i = AuxConfig, i + 2
            continue
        if model is AuxConfig and parts[i] == "options":
            try:
                from methods import AUX_TASKS

                model = AUX_TASKS.get(parts[i - 1]).Options
            except (UnknownNameError, AttributeError):
                return None
            i += 1
            continue
        sub = _model_of(f.annotation)
        if sub is None:
            return None
        model, i = sub, i + 1
    return None


_VALUE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
                 "float_parsing", "float_type", "int_parsing", "int_type", "int_from_float", "bool_parsing",
                 "bool_type", "string_type", "finite_number", "tuple_type", "too_short", "too_long")


def _pydantic_problems(err: ValidationError, prefix: str, model: type[BaseModel]) -> list[tuple[str, str]]:
    from harness.config import _known_fields

    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc)
        if e["type"] == "extra_forbidden":
            valid = _known_fields(model, loc[:-1]) or []
            msg = f"unknown key{closest(loc[-1], valid)}"
            if valid and not closest(loc[-1], valid):
                msg += f"; valid keys: {', '.join(valid)}"
        elif e["type"] in _VALUE_ERRORS and (info := field_info(path)) is not None:
            msg = f"expected {describe_field(info)}"
            if "input" in e and not isinstance(e["input"], dict):
                msg += f", got {e['input']!r}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
        out.append((path, msg))
    return out


def config_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a raw run config, as (config path, message); [] when it is valid. Registry
    names and auxiliary-task options are checked even when other fields are bad."""
    from harness.models import MODELS
    from methods import AUX_TASKS, HOSTS

    out: list[tuple[str, str]] = []
    try:
        RunConfig.model_validate(data)
    except ValidationError as e:
        out.extend(_pydantic_problems(e, "", RunConfig))
    defaults = RunConfig()

    def get(*keys: str, default: Any = None) -> Any:
        node: Any = data
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return default
            node = node[k]
        return node

    arch = get("model", "arch", default=defaults.model.arch)
    host_name = get("method", "host", default=defaults.method.host)
    for path, registry, name in (("model.arch", MODELS, arch), ("method.host", HOSTS, host_name)):
        if isinstance(name, str):
            try:
                registry.get(name)
            except UnknownNameError as e:
                out.append((path, str(e)))
    options = get("model", "options", default={})
    if isinstance(arch, str) and arch in MODELS and isinstance(options, dict):
        try:
            from harness.models import check_options

            check_options(arch, options)
        except ConfigError as e:
            out.append(("model.options", str(e).split(": ", 1)[-1]))
        except ImportError:
            pass
    host = HOSTS.get(host_name) if isinstance(host_name, str) and host_name in HOSTS else None
    aux = get("method", "aux", default={})
    for name, spec in (aux.items() if isinstance(aux, dict) else []):
        try:
            task = AUX_TASKS.get(str(name))
        except UnknownNameError as e:
            out.append((f"method.aux.{name}", str(e)))
            continue
        if host is not None and getattr(task, "needs_pseudo_labels", False) and not host.provides_pseudo_labels:
            out.append((f"method.aux.{name}", f"needs the teacher's pseudo-labels, which host "
                        f"'{host_name}' does not provide; use a self-training host such as 'dacs'"))
        opts = spec.get("options", {}) if isinstance(spec, dict) else {}
        options_model = getattr(task, "Options", None)
        if options_model is not None and isinstance(opts, dict):
            try:
                options_model.model_validate(opts)
            except ValidationError as e:
                out.extend(_pydantic_problems(e, f"method.aux.{name}.options", options_model))
    if not out:  # the run-config loader is the final authority
        try:
            validate_config(data, "")
        except ConfigError as e:
            out.append(("", str(e).removeprefix(": ")))
    return out


# --------------------------------------------------------------------------------------------------
# axes and trials

@dataclass(frozen=True)
class Axis:
    """A named axis: a config path, or named variants (each a config overlay)."""

    name: str
    path: str | None = None
    variants: dict[str, dict[str, Any]] | None = None

    def overlay(self, value: Any) -> dict[str, Any]:
        if self.variants is not None:
            return copy.deepcopy(self.variants[str(value)])
        assert self.path is not None
        return nest(self.path, value)

    def describe(self) -> str:
        return self.path if self.path else "variants " + ", ".join(self.variants or {})


def aux_axis() -> Axis:
    from methods import AUX_TASKS

    variants = {NO_AUX: {}}
    variants.update({name: {"method": {"aux": {name: {}}}} for name in AUX_TASKS.names()})
    return Axis(AUX_AXIS, variants=variants)


def _fmt_value(v: Any) -> str:
    return _num(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


@dataclass
class Trial:
    """One point of a study: its axis values, resolved config and config hash."""

    index: int
    point: dict[str, Any]
    config: RunConfig

    @property
    def name(self) -> str:
        return ",".join(f"{k}={_fmt_value(v)}" for k, v in self.point.items()) or "base"

    @property
    def hash(self) -> str:
        return self.config.hash()


@dataclass
class Study:
    """A validated study file at one scale; `trials()` expands the grid, `resolve()` any point."""

    path: Path
    spec: StudyFile
    scale: str
    base: dict[str, Any]
    axes: dict[str, Axis]
    overrides: list[str] = field(default_factory=list)
    text_hash: str = ""
    blocks: list[dict[str, list[Any]]] = field(default_factory=list)  # the grid's blocks at this scale
    _trials: list[Trial] | None = None

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem

    @property
    def is_search(self) -> bool:
        return self.spec.search is not None

    @property
    def axis_names(self) -> list[str]:
        return list(self.spec.search.params if self.spec.search else self.spec.grid)

    def raw(self, point: dict[str, Any]) -> dict[str, Any]:
        """The merged raw config of a point (not validated)."""
        from harness.scales import scale_overlay

        overlays: dict[str, Any] = {}
        for name, value in point.items():
            overlays = deep_merge(overlays, self.axes[name].overlay(value))
        probe = apply_overrides(deep_merge(self.base, overlays), self.overrides)
        arch = probe.get("model", {}).get("arch", RunConfig().model.arch)
        data = deep_merge(self.base, scale_overlay(self.scale, arch if isinstance(arch, str) else None))
        return apply_overrides(deep_merge(data, overlays), self.overrides)

    def resolve(self, point: dict[str, Any]) -> RunConfig:
        """The validated config of a point (a grid point, or a point a searcher sampled)."""
        point = {k: _cast(self.spec.search.params[k], v) if self.spec.search else v for k, v in point.items()}
        cfg = validate_config(self.raw(point), f"{self.path} ({_point_name(point)})")
        cfg.name = f"{self.name}/{_point_name(point)}"
        return cfg

    def trials(self, cover: bool = False) -> list[Trial]:
        """The grid's trials in file order (a search study: none). `cover`: a small subset in which
        every value of every axis appears at least once (a quick check of the whole study)."""
        if self._trials is None:
            self._trials = []
            for i, p in enumerate(grid_points(self.blocks)):
                cfg = validate_config(self.raw(p), str(self.path))
                cfg.name = f"{self.name}/{_point_name(p)}"
                self._trials.append(Trial(i, p, cfg))
        if not cover or not self.blocks:
            return list(self._trials)
        keys = [t.point for t in self._trials]
        chosen: list[int] = []
        for block in self.blocks:  # per block, the diagonal: every value of every axis at least once
            values = list(block.values())
            for k in range(max(len(v) for v in values)):
                i = keys.index(dict(zip(block, [v[k % len(v)] for v in values])))
                if i not in chosen:
                    chosen.append(i)
        return [self._trials[i] for i in chosen]

    def resources(self) -> dict[str, float]:
        from harness.scales import SCALES

        if self.spec.resources is not None:
            r = self.spec.resources
        else:
            r = Resources(**SCALES[self.scale].get("resources", {}))
        return {"cpu": r.cpu, "gpu": r.gpu}

    def param_space(self, trials: list[Trial] | None = None) -> dict[str, Any]:
        """Ray Tune's param_space: a grid of points, or the search's ranges."""
        from ray import tune

        if self.spec.search is None:
            return {"point": tune.grid_search([t.point for t in (trials or self.trials())])}
        space = {}
        for name, p in self.spec.search.params.items():
            if p.type == "uniform":
                space[name] = tune.uniform(p.low, p.high)
            elif p.type == "loguniform":
                space[name] = tune.loguniform(p.low, p.high)
            elif p.type == "randint":
                space[name] = tune.randint(int(p.low), int(p.high))
            else:
                space[name] = tune.choice(list(p.values or []))
        return {"point": space}


def _cast(param: SearchParam, value: Any) -> Any:
    if param.type == "randint":
        return int(value)
    if param.type in ("uniform", "loguniform"):
        return float(value)
    return value


def _point_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={_fmt_value(v)}" for k, v in point.items()) or "base"


def grid_points(blocks: list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """The union of the blocks' cartesian products, in file order; a point in two blocks comes once."""
    points: list[dict[str, Any]] = []
    for block in blocks:
        for combo in itertools.product(*block.values()):
            point = dict(zip(block, combo))
            if point not in points:
                points.append(point)
    return points


def _grid_blocks(spec: StudyFile, probs: _Problems) -> tuple[list[tuple[str, dict[str, list[Any]]]],
                                                               dict[str, list[Any]]]:
    """The grid as [(location, block)] and the union of each axis' values. A list of blocks must
    name the same axes in each block (they are the table's columns)."""
    def values_of(where: str, block: Any) -> dict[str, list[Any]]:
        if not isinstance(block, dict):
            probs.add(where, f"expected a mapping of axis -> list of values, got {block!r}")
            return {}
        for name, values in list(block.items()):
            if not isinstance(values, list):
                probs.add(f"{where}.{name}", f"expected a list of values, got {values!r}")
                block = {k: v for k, v in block.items() if k != name}
        return {str(k): v for k, v in block.items()}

    if not isinstance(spec.grid, list):
        grid = values_of("grid", spec.grid) if spec.grid else {}
        return ([("grid", grid)] if grid else []), dict(grid)
    blocks = [(f"grid[{b}]", values_of(f"grid[{b}]", block)) for b, block in enumerate(spec.grid)]
    if not blocks:
        probs.add("grid", "expected a mapping of axis -> values, or a non-empty list of them")
    names = list(blocks[0][1]) if blocks else []
    for where, block in blocks:
        if not block:
            probs.add(where, "expected a non-empty mapping of axis -> values")
        elif list(block) != names:
            probs.add(where, f"expected the axes of grid[0] ({', '.join(names)}) in that order, got "
                      f"{', '.join(block)}")
    union: dict[str, list[Any]] = {}
    for _, block in blocks:
        for name, values in block.items():
            for v in values:
                if not isinstance(v, dict | list) and v not in union.setdefault(name, []):
                    union[name].append(v)
    return blocks, union


# --------------------------------------------------------------------------------------------------
# loading and validation

class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []
        self._seen: set[str] = set()

    def add(self, where: str, message: str) -> None:
        line = f"{where}: {message}" if where else message
        if line not in self._seen:
            self._seen.add(line)
            self.items.append(line)

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            head = f"{self.source}: {n} problem{'s' if n > 1 else ''}"
            raise StudyError(head + "\n" + "\n".join(f"  {self.source}: {line}" for line in self.items))


def _resolve_axis(name: str, defined: dict[str, Axis]) -> Axis | None:
    if name in defined:
        return defined[name]
    if name == AUX_AXIS:
        return aux_axis()
    if name in AXES:
        return Axis(name, path=AXES[name])
    if "." in name:
        return Axis(name, path=name)
    return None


def _check_path(path: str) -> str | None:
    """None if `path` can be a run-config path, else why not (with the closest valid key). Below
    free-form mappings (`model.options`, an auxiliary task's options) values are checked later."""
    parts = path.split(".")
    if any(not p for p in parts):
        return f"'{path}' is not a config path"
    model: type[BaseModel] | None = RunConfig
    i = 0
    while i < len(parts) and model is not None:
        fields = model.model_fields
        if parts[i] not in fields:
            where = ".".join(parts[:i + 1])
            return f"'{where}' is not a config field{closest(parts[i], fields)}"
        if model is MethodConfig and parts[i] == "aux":
            model, i = AuxConfig, i + 2  # method.aux.<task name>.<AuxConfig field>
            continue
        if model is AuxConfig and parts[i] == "options":
            try:
                from methods import AUX_TASKS

                model = AUX_TASKS.get(parts[i - 1]).Options
            except (UnknownNameError, AttributeError):
                return None
            i += 1
            continue
        model = _model_of(fields[parts[i]].annotation)
        i += 1
    return None


def _check_axes(spec: StudyFile, probs: _Problems) -> dict[str, Axis]:
    defined: dict[str, Axis] = {}
    for name, value in spec.axes.items():
        where = f"axes.{name}"
        if isinstance(value, str):
            why = _check_path(value)
            if why:
                probs.add(where, why)
                continue
            defined[name] = Axis(name, path=value)
        elif isinstance(value, dict) and value:
            variants = {}
            for vname, overlay in value.items():
                if overlay is None:
                    overlay = {}
                if not isinstance(overlay, dict):
                    probs.add(f"{where}.{vname}", f"expected a mapping of config paths to values (an "
                              f"overlay), got {overlay!r}")
                    continue
                nested = expand_dotted(overlay)
                bad = [why for p in leaf_paths(nested) if (why := _check_path(p))]
                for why in bad:
                    probs.add(f"{where}.{vname}", why)
                variants[str(vname)] = nested
            defined[name] = Axis(name, variants=variants)
        else:
            probs.add(where, f"expected a config path (e.g. method.aux.mfm.options.mask_ratio) or a "
                      f"mapping of named variants to config overlays, got {value!r}")
    return defined


_PLACEHOLDER = {"description": "?", "config": "", "num_samples": 1}


def _delete(data: Any, loc: tuple) -> bool:
    node = data
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        del node[loc[-1]]
        return True
    except (KeyError, IndexError, TypeError):
        return False


def _set(data: Any, loc: tuple, value: Any) -> None:
    node = data
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


def _study_field(loc: tuple):
    model: Any = StudyFile
    info = None
    for part in loc:
        if isinstance(part, int) or model is None:
            return None
        if model is SearchSpec and part == "params":
            model = SearchParam
            continue
        if model is SearchParam and part not in SearchParam.model_fields:
            continue  # a parameter's name
        info = model.model_fields.get(part)
        if info is None:
            return None
        model = _model_of(info.annotation)
    return info


def _parse_spec(data: dict[str, Any], probs: _Problems) -> StudyFile:
    """The file's structure; every structural problem is recorded, and the offending entries are
    dropped (or replaced by placeholders) so that the rest of the file can still be checked."""
    data = copy.deepcopy(data)
    for _ in range(20):
        try:
            return StudyFile.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                loc = tuple(err["loc"])
                where = loc_str(loc)
                if err["type"] == "extra_forbidden":
                    key = str(loc[-1])
                    valid: list[str] = []
                    if len(loc) == 1:
                        valid = list(StudyFile.model_fields)
                    elif loc[0] == "search":
                        valid = list((SearchParam if len(loc) > 3 else SearchSpec).model_fields)
                    elif loc[0] == "resources":
                        valid = list(Resources.model_fields)
                    elif loc[0] == "at_scale" and len(loc) == 3:
                        valid = list(ScaleChanges.model_fields)
                    hint = closest(key, valid)
                    probs.add(where, f"unknown key{hint}" + (f"; valid keys: {', '.join(valid)}"
                                                             if valid and not hint else ""))
                    _delete(data, loc)
                elif err["type"] == "missing":
                    probs.add(where, "required key is missing")
                    if loc[-1] in _PLACEHOLDER:
                        _set(data, loc, _PLACEHOLDER[loc[-1]])
                    elif not _delete(data, loc[:-1]):
                        return StudyFile(description="?", config="")
                else:
                    info = _study_field(loc)
                    if info is not None and err["type"] in _VALUE_ERRORS:
                        msg = f"expected {describe_field(info)}"
                    else:
                        msg = err["msg"]
                    if "input" in err and not isinstance(err["input"], dict | list):
                        msg += f", got {err['input']!r}" if msg.startswith("expected") else f" (got {err['input']!r})"
                    probs.add(where, msg)
                    if loc and loc[-1] in _PLACEHOLDER:
                        _set(data, loc, _PLACEHOLDER[loc[-1]])
                    elif not _delete(data, loc):
                        return StudyFile(description="?", config="")
    return StudyFile(description="?", config="")



def _apply_at_scale(spec: StudyFile, blocks: list[tuple[str, dict[str, list[Any]]]], scale: str,
                    probs: _Problems) -> tuple[StudyFile, list[tuple[str, dict[str, list[Any]]]]]:
    """Check every `at_scale` entry; return the spec and the located grid blocks with this scale's
    changes applied. An entry may only shrink the study: a subset of an axis' values, fewer search
    samples. `spec.grid` is the mapping of each axis' values here (a list of blocks: the union of
    their values); a block left without a value of some axis is dropped."""
    from harness.scales import SCALES

    for key, changes in spec.at_scale.items():
        where = f"at_scale.{key}"
        if key not in SCALES:
            probs.add(where, f"unknown scale{closest(key, SCALES)}; valid: {', '.join(SCALES)}")
        for name, values in changes.grid.items():
            if spec.search is None and not spec.grid:
                break  # no usable grid: reported already
            if name not in spec.grid:
                probs.add(f"{where}.grid.{name}", f"not an axis of this study's grid"
                          f"{closest(name, spec.grid)}; axes: {', '.join(spec.grid) or 'none (a search)'}")
                continue
            if not values:
                probs.add(f"{where}.grid.{name}", "expected a non-empty list of values")
            for i, v in enumerate(values):
                if v not in spec.grid[name]:
                    probs.add(f"{where}.grid.{name}[{i}]", f"{v!r} is not a value of grid.{name} "
                              f"({', '.join(map(str, spec.grid[name]))}); at_scale only selects values")
        if "num_samples" in changes.search:
            n = changes.search["num_samples"]
            if spec.search is None:
                probs.add(f"{where}.search", "this study has no 'search' block")
            elif not 1 <= n <= spec.search.num_samples:
                probs.add(f"{where}.search.num_samples", f"expected an integer in [1, "
                          f"{spec.search.num_samples}] (search.num_samples), got {n}")
    changes = spec.at_scale.get(scale)
    if changes is None:
        return spec, blocks
    kept = [(where, _select(block, changes.grid)) for where, block in blocks]
    kept = [(where, block) for where, block in kept if all(block.values())]
    if not kept and blocks:
        probs.add(f"at_scale.{scale}.grid", "selects no trial: no grid block keeps a value of every axis")
    search = spec.search
    if search is not None and "num_samples" in changes.search:
        search = search.model_copy(update={"num_samples": min(search.num_samples,
                                                              changes.search["num_samples"])})
    return spec.model_copy(update={"grid": _select(spec.grid, changes.grid), "search": search}), kept


def _select(block: dict[str, list[Any]], keep: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: ([v for v in vs if v in keep[k]] if k in keep else vs) for k, vs in block.items()}


def load_study(path: str | Path, scale: str = "cpu", overrides: list[str] | None = None) -> Study:
    """Read and validate a study file at `scale`; raise StudyError listing every problem."""
    from harness.config import load_yaml
    from harness.scales import SCALES

    path = Path(path)
    source = str(path)
    data = load_yaml(path)  # ConfigError naming the file when missing or not YAML
    text_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    probs = _Problems(source)
    if scale not in SCALES:
        probs.add("--scale", f"unknown scale '{scale}'{closest(scale, SCALES)}; valid: {', '.join(SCALES)}")
        probs.raise_if_any()
    spec = _parse_spec(data, probs)
    n_before = len(probs.items)
    located_blocks, union = _grid_blocks(spec, probs)
    spec = spec.model_copy(update={"grid": union})
    grid_broken = len(probs.items) > n_before  # then say nothing more about the grid's absence

    if spec.name is not None and not _NAME.match(spec.name):
        probs.add("name", f"'{spec.name}': use letters, digits, '_', '.', '-' (it names the MLflow "
                  "experiment and the results folder)")
    if not spec.grid and spec.search is None and not grid_broken:
        probs.add("grid", "a study needs a 'grid' (an ablation) or a 'search' block")
    if spec.grid and spec.search is not None:
        probs.add("search", "a study has either a 'grid' or a 'search' block, not both (Optuna does not "
                  "take grid axes; put fixed values under 'set:')")
    for key in spec.expected_runtime:
        if key not in SCALES:
            probs.add(f"expected_runtime.{key}", f"unknown scale{closest(key, SCALES)}; valid: "
                      f"{', '.join(SCALES)}")
    spec, located_blocks = _apply_at_scale(spec, located_blocks, scale, probs)

    # the base config
    base: dict[str, Any] = {}
    config_path = (path.parent / spec.config).resolve()
    try:
        base = load_raw(config_path) if spec.config else {}
    except ConfigError as e:
        probs.add("config", str(e))
    set_overlay: dict[str, Any] = {}
    for key, value in spec.set.items():
        why = _check_path(str(key))
        if why:
            probs.add(f"set.{key}", why)
            continue
        set_overlay = deep_merge(set_overlay, nest(str(key), expand_dotted(value) if isinstance(value, dict)
                                                   else value))
    base = deep_merge(base, set_overlay)
    override_paths = []
    for text in overrides or []:
        try:
            keys, _ = parse_override(text)
        except ConfigError as e:
            probs.add("--set", str(e))
            continue
        override_paths.append(".".join(keys))

    # axes
    defined = _check_axes(spec, probs)
    axes: dict[str, Axis] = {}
    axis_values: dict[str, list[tuple[str, Any]]] = {}  # axis -> [(where, value)]
    rejected: set[str] = set()
    for block_at, block in located_blocks:
        for name, values in block.items():
            if name in rejected:
                continue
            axis = axes.get(name) or _resolve_axis(name, defined)
            if axis is None:
                probs.add(f"{block_at}.{name}", f"unknown axis{closest(name, [*AXES, *defined, AUX_AXIS])}; "
                          f"define it under 'axes:' (name: config.path) or use a config path such as "
                          f"method.aux.mfm.options.mask_ratio; built-in axes: {', '.join([*AXES, AUX_AXIS])}")
                rejected.add(name)
                continue
            if axis.path and (why := _check_path(axis.path)):
                probs.add(f"{block_at}.{name}", why)
                rejected.add(name)
                continue
            axes[name] = axis
            if not values:
                probs.add(f"{block_at}.{name}", "expected a non-empty list of values")
            seen: list[Any] = []
            for i, v in enumerate(values):
                where = f"{block_at}.{name}[{i}]"
                if isinstance(v, dict | list):
                    probs.add(where, f"expected a single value, got {v!r}")
                    continue
                if v in seen:
                    probs.add(where, f"duplicate value {v!r}")
                    continue
                seen.append(v)
                if any(v == known for _, known in axis_values.get(name, [])):
                    continue  # the same value in an earlier block: checked there
                if axis.variants is not None and str(v) not in axis.variants:
                    probs.add(where, f"unknown {name} '{v}'{closest(str(v), axis.variants)}; valid: "
                              f"{', '.join(axis.variants)}")
                    continue
                axis_values.setdefault(name, []).append((where, v))
    if spec.search is not None:
        s = spec.search
        if s.metric not in METRICS and not s.metric.startswith(("iou/", "loss/")):
            probs.add("search.metric", f"unknown metric '{s.metric}'{closest(s.metric, METRICS)}; valid: "
                      f"{', '.join(METRICS)}, iou/<class>, loss/<name>")
        for name, p in s.params.items():
            where = f"search.params.{name}"
            axis = _resolve_axis(name, defined)
            if axis is None:
                probs.add(where, f"unknown axis{closest(name, [*AXES, *defined])}; define it under 'axes:' "
                          "or use a config path")
                continue
            axes[name] = axis
            if p.type == "choice":
                if not p.values:
                    probs.add(f"{where}.values", "a choice needs a non-empty list of values")
                for i, v in enumerate(p.values or []):
                    axis_values.setdefault(name, []).append((f"{where}.values[{i}]", v))
                continue
            if axis.variants is not None:
                probs.add(f"{where}.type", f"axis '{name}' has named variants; use type: choice")
                continue
            bad = False
            for key in ("low", "high"):
                if getattr(p, key) is None:
                    probs.add(f"{where}.{key}", f"required for type {p.type}")
                    bad = True
            if bad:
                continue
            if p.low >= p.high:
                probs.add(where, f"expected low < high, got low={_num(p.low)}, high={_num(p.high)}")
            if p.type == "loguniform" and p.low <= 0:
                probs.add(f"{where}.low", f"loguniform needs low > 0, got {_num(p.low)}")
            if p.type == "randint" and (p.low != int(p.low) or p.high != int(p.high)):
                probs.add(where, "randint needs integer low and high")
            for key in ("low", "high"):
                v = getattr(p, key)
                axis_values.setdefault(name, []).append((f"{where}.{key}", _cast(p, v)))
    for name, axis in axes.items():
        for path_ in override_paths:
            for leaf in (leaf_paths(axis.overlay(axis_values[name][0][1])) if axis_values.get(name) else []):
                if _related(path_, leaf):
                    probs.add("--set", f"'{path_}' is varied by axis '{name}'; drop the override or the axis")
    structural = bool(probs.items)

    study = Study(path=path, spec=spec, scale=scale, base=base, axes=axes, overrides=list(overrides or []),
                  text_hash=text_hash, blocks=[b for _, b in located_blocks])

    # the base (no axis values) at this scale
    def check(point: dict[str, Any]) -> list[tuple[str, str]]:
        try:
            return config_problems(study.raw(point))
        except ConfigError as e:  # e.g. an unknown scale's arch
            return [("", str(e))]

    base_problems = check({})
    set_leaves = {f"set.{k}": leaf_paths(nest(str(k), expand_dotted(v) if isinstance(v, dict) else v))
                  for k, v in spec.set.items()}
    for cpath, msg in base_problems:
        owner = next((k for k, leaves in set_leaves.items() if any(_related(cpath, p) for p in leaves)),
                     f"config ({spec.config})")
        probs.add(owner, f"{cpath}: {msg}" if cpath else msg)
    base_known = {(c, m) for c, m in base_problems}

    # each axis value alone
    bad_values: set[tuple[str, str]] = set()
    for name, items in axis_values.items():
        axis = axes[name]
        for where, value in items:
            leaves = leaf_paths(axis.overlay(value)) or [f"method.aux.{value}"]
            for cpath, msg in check({name: value}):
                if (cpath, msg) in base_known:
                    continue
                if any(_related(cpath, leaf) for leaf in leaves) or not cpath:
                    bad_values.add((name, repr(value)))
                    if axis.path and cpath == axis.path:
                        probs.add(where, msg)
                    else:
                        probs.add(where, f"{cpath}: {msg}" if cpath else msg)

    # every grid trial made of valid values (problems of a combination, e.g. a task the host can't feed)
    if study.blocks and not structural:
        known = set(base_known)
        more = 0
        for i, point in enumerate(grid_points(study.blocks)):
            if any((k, repr(v)) in bad_values for k, v in point.items()):
                continue
            for cpath, msg in check(point):
                if (cpath, msg) in known:
                    continue
                known.add((cpath, msg))
                if len(probs.items) >= 30:
                    more += 1
                    continue
                probs.add(f"grid (trial {i}: {_point_name(point)})", f"{cpath}: {msg}" if cpath else msg)
        if more:
            probs.add("grid", f"... and {more} more problem(s) in other trials")
    probs.raise_if_any()
    return study


def study_summary(study: Study) -> str:
    if study.spec.search is not None:
        s = study.spec.search
        return (f"search of {s.num_samples} trial(s) over {', '.join(s.params)} ({s.mode} {s.metric}, "
                f"Optuna seed {s.seed})")
    n = len(grid_points(study.blocks))
    blocks = [" x ".join(f"{k}({len(v)})" for k, v in block.items()) for block in study.blocks]
    return f"grid of {n} trial(s): {' + '.join(blocks)}"


def dump_point(point: dict[str, Any]) -> str:
    return yaml.safe_dump(point, sort_keys=False).strip()

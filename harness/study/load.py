"""`load_study(path, scale)`: read a study file, check everything (the schema, axes and their config
paths, grid blocks, `at_scale` cuts, every trial's resolved config) and report every problem at once,
each with its path in the file; then the `Study`. Nothing is written."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.config import (
    AuxConfig,
    ConfigError,
    MethodConfig,
    RunConfig,
    deep_merge,
    load_raw,
    parse_override,
)
from harness.registry import UnknownNameError, closest
from harness.study.fields import (
    VALUE_ERRORS,
    config_problems,
    describe_field,
    expand_dotted,
    fmt_num,
    leaf_paths,
    loc_str,
    model_of,
    nest,
    related,
)
from harness.study.spec import (
    AUX_AXIS,
    AXES,
    METRICS,
    NAME_PATTERN,
    Resources,
    ScaleChanges,
    SearchParam,
    SearchSpec,
    StudyError,
    StudyFile,
)
from harness.study.trials import Axis, Study, aux_axis, cast_value, grid_points, point_name


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
        model = model_of(fields[parts[i]].annotation)
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
        model = model_of(info.annotation)
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
                    if info is not None and err["type"] in VALUE_ERRORS:
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

    if spec.name is not None and not NAME_PATTERN.match(spec.name):
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
                probs.add(where, f"expected low < high, got low={fmt_num(p.low)}, high={fmt_num(p.high)}")
            if p.type == "loguniform" and p.low <= 0:
                probs.add(f"{where}.low", f"loguniform needs low > 0, got {fmt_num(p.low)}")
            if p.type == "randint" and (p.low != int(p.low) or p.high != int(p.high)):
                probs.add(where, "randint needs integer low and high")
            for key in ("low", "high"):
                v = getattr(p, key)
                axis_values.setdefault(name, []).append((f"{where}.{key}", cast_value(p, v)))
    for name, axis in axes.items():
        for path_ in override_paths:
            for leaf in (leaf_paths(axis.overlay(axis_values[name][0][1])) if axis_values.get(name) else []):
                if related(path_, leaf):
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
        owner = next((k for k, leaves in set_leaves.items() if any(related(cpath, p) for p in leaves)),
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
                if any(related(cpath, leaf) for leaf in leaves) or not cpath:
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
                probs.add(f"grid (trial {i}: {point_name(point)})", f"{cpath}: {msg}" if cpath else msg)
        if more:
            probs.add("grid", f"... and {more} more problem(s) in other trials")
    probs.raise_if_any()
    return study

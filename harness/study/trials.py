"""A validated study at one scale (`Study`) and its expansion: axes as config overlays, the grid's
points, each point's resolved config (`Trial`), Ray Tune's param space, and a trial's config made
runnable anywhere (`absolutize`)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config import RunConfig, apply_overrides, deep_merge, raw_arch
from harness.engine.resolve import validate as validate_config
from harness.study.fields import fmt_num, nest
from harness.study.spec import AUX_AXIS, NO_AUX, Resources, SearchParam, StudyFile


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


def fmt_value(v: Any) -> str:
    return fmt_num(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


@dataclass
class Trial:
    """One point of a study: its axis values, resolved config and config hash."""

    index: int
    point: dict[str, Any]
    config: RunConfig

    @property
    def name(self) -> str:
        return ",".join(f"{k}={fmt_value(v)}" for k, v in self.point.items()) or "base"

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
        from harness.scales import raw_aux, scale_overlay

        overlays: dict[str, Any] = {}
        for name, value in point.items():
            overlays = deep_merge(overlays, self.axes[name].overlay(value))
        probe = apply_overrides(deep_merge(self.base, overlays), self.overrides)
        data = deep_merge(self.base, scale_overlay(self.scale, raw_arch(probe), raw_aux(probe)))
        return apply_overrides(deep_merge(data, overlays), self.overrides)

    def resolve(self, point: dict[str, Any]) -> RunConfig:
        """The validated config of a point (a grid point, or a point a searcher sampled)."""
        point = {k: cast_value(self.spec.search.params[k], v) if self.spec.search else v for k, v in point.items()}
        cfg = validate_config(self.raw(point), f"{self.path} ({point_name(point)})")
        cfg.name = f"{self.name}/{point_name(point)}"
        return cfg

    def trials(self, cover: bool = False) -> list[Trial]:
        """The grid's trials in file order (a search study: none). `cover`: a small subset in which
        every value of every axis appears at least once (a quick check of the whole study)."""
        if self._trials is None:
            self._trials = []
            for i, p in enumerate(grid_points(self.blocks)):
                cfg = validate_config(self.raw(p), str(self.path))
                cfg.name = f"{self.name}/{point_name(p)}"
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


def cast_value(param: SearchParam, value: Any) -> Any:
    if param.type == "randint":
        return int(value)
    if param.type in ("uniform", "loguniform"):
        return float(value)
    return value


def point_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={fmt_value(v)}" for k, v in point.items()) or "base"


def grid_points(blocks: list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """The union of the blocks' cartesian products, in file order; a point in two blocks comes once."""
    points: list[dict[str, Any]] = []
    for block in blocks:
        for combo in itertools.product(*block.values()):
            point = dict(zip(block, combo))
            if point not in points:
                points.append(point)
    return points


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


def absolutize(cfg: RunConfig, root: str | Path, output: Path, threads: int) -> RunConfig:
    """A copy of `cfg` for the trial's process: relative paths (data roots, pretrained weights) made
    absolute under `root`, output in the trial's folder. Hashes and tags use `cfg` as written."""
    root = Path(root)
    d = cfg.to_dict()
    for split in ("source", "target", "val"):
        r = d["data"][split]["root"]
        if r and not Path(r).is_absolute():
            d["data"][split]["root"] = str(root / r)
    if d["model"]["pretrained"] and not Path(d["model"]["pretrained"]).is_absolute():
        d["model"]["pretrained"] = str(root / d["model"]["pretrained"])
    d["output"] = str(output)
    if d.get("threads") is None:
        d["threads"] = threads
    return RunConfig.model_validate(d)

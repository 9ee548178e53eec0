"""Reproduction bands: a study's runs against a reference (`udabench report ... --against REFERENCE`).

A reference is either a file in the format below (references/*.yaml: published numbers, or the
project's committed results exported with `udabench report --export-reference`), or a committed
results table of this project (a report folder such as reports/gap, or its tables/trials.csv, whose
README.md gives the environment).

**Cells.** A run and a reference entry are compared when they are the same cell: benchmark
(`<source>[:domain]-><target>[:domain]`, from the run's `data.*` params), architecture
(`model.arch/model.backbone`), host, auxiliary task(s), scale, evaluation split and the study's axis
values. Per run and matching entry the comparison gives:

- **the band**: the 95% prediction interval for ONE new run, `m ± t(0.975, df) · s · sqrt(1 + 1/n)`
  (m: the reference mean of n runs; s: the seed standard deviation with df degrees of freedom; normal
  seed noise of equal variance on both sides). s is the entry's own (its per-run values, or a
  published std with n >= 3); else the pooled std of the reference's entries that have one
  (`s² = Σ df_i s_i² / Σ df_i`, df = Σ df_i: assumes one seed variance across cells); else
  (no spread anywhere) the reference's `tolerance`, a stated half-width that is not a statistical
  interval; else no band. A run outside the band is flagged;
- **collapsed classes**: a class with IoU below `COLLAPSE_BELOW` (%) in the run while the reference
  has it at `WELL_ABOVE` or more on average and at `COLLAPSE_BELOW` or more in every reference run
  (needs per-class reference numbers);
- **environment**: the values of `ENV_KEYS` (MLflow tags of each run) that differ between the runs of
  the cell and the reference, where both sides recorded them;
- the difference to the reference run of the same seed, when the reference has one.

Reference file (YAML), every number with a source:

    format: udabench-reference/1
    name: paper
    description: ...
    tolerance: {value: 4.0, source: "..."}        # optional: half-width where no seed spread exists
    environment: {torch: 1.7.1+cu110, source: "..."}  # optional: the reference side's environment
    cells:
      - benchmark: gta5->cityscapes
        architecture: daformer/pvt_v2_b5
        host: dacs
        aux: none                                  # default none; also: scale (required), eval_split
        scale: paper                               # (default val), axes ({name: value}), metric
        method: DAFormer                           # (default target_miou), compare (default true),
        mean: 68.3                                 # note, environment, classes ({class: mean IoU})
        n: 3                                       # runs behind the mean (null: not stated)
        std: null                                  # seed std, when published
        source: "..."                              # required
        runs: [{seed: null, value: 68.85, source: "..."}]  # per-run values, as many as published
                                                   # (each also: classes, environment, run_id)

`mean` may be left out when `runs` holds every run (it is then their mean, std and n).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import UsageError
from harness.labels import CLASSES
from harness.report.runs import HEADLINE, METRIC_LABEL, MISSING, NO_AUX, StudyData, iou_metric
from harness.report.tables import Table

FORMAT = "udabench-reference/1"
COLLAPSE_BELOW = 1.0     # IoU (%) under which a class counts as collapsed in a run
WELL_ABOVE = 10.0        # ... when the reference's mean IoU of the class is at least this
ENV_KEYS = ("git_commit", "git_dirty", "data_hash", "config_hash", "python", "torch", "cuda", "device")
SHOWN = 30               # flagged items per study printed on the console (all are in the table)


class ReferenceError(UsageError):
    """A malformed reference: names the file, the line or field, and what was expected (exit 2)."""


# --------------------------------------------------------------------------------------------------
# the file format

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sourced(_Strict):
    value: float = Field(ge=0)
    source: str = Field(min_length=1)


def _check_classes(v: dict[str, float]) -> dict[str, float]:
    for name, iou in v.items():
        if name not in CLASSES:
            raise ValueError(f"unknown class '{name}'; expected one of: {', '.join(CLASSES)}")
        if not 0 <= iou <= 100:
            raise ValueError(f"IoU of '{name}' is {iou}; expected a percentage in [0, 100]")
    return v


class RefRun(_Strict):
    seed: int | str | None = None
    value: float = Field(ge=0, le=100)
    classes: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    source: str | None = Field(None, min_length=1)
    run_id: str | None = None

    _classes = field_validator("classes")(_check_classes)


class RefCell(_Strict):
    benchmark: str = Field(min_length=1)
    architecture: str = Field(pattern=r"^[^/\s]+/[^/\s]+$")
    host: str = Field(min_length=1)
    aux: str = NO_AUX
    scale: str = Field(min_length=1)
    eval_split: str = "val"
    axes: dict[str, str] = Field(default_factory=dict)
    method: str = ""
    metric: Literal["target_miou", "target_miou16", "target_miou13"] = "target_miou"
    mean: float | None = Field(None, ge=0, le=100)
    std: float | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1)
    runs: list[RefRun] = Field(default_factory=list)
    classes: dict[str, float] = Field(default_factory=dict)
    source: str = Field(min_length=1)
    compare: bool = True
    note: str = ""
    environment: dict[str, str] = Field(default_factory=dict)

    _classes = field_validator("classes")(_check_classes)

    @model_validator(mode="after")
    def _summary(self) -> RefCell:
        if self.mean is None and not self.runs:
            raise ValueError("needs 'mean' (with 'n' and 'std' when published) or 'runs' (per-run values)")
        if self.std is not None and self.mean is None:
            raise ValueError("'std' without 'mean': give the mean the std belongs to")
        if self.std is not None and (self.n or 0) < 2:
            raise ValueError("'std' needs 'n' >= 2 (the runs behind the mean and std)")
        if self.mean is not None and self.n is not None and len(self.runs) > self.n:
            raise ValueError(f"{len(self.runs)} runs listed but n = {self.n}; expected at most n runs")
        return self

    # the summary the band uses: the stated mean, else the runs'
    def summary(self) -> tuple[float, int | None, float | None]:
        """(mean, n, std) of the entry: as stated, else from its runs (std with >= 2 runs)."""
        if self.mean is not None:
            return self.mean, self.n, self.std
        values = [r.value for r in self.runs]
        return float(np.mean(values)), len(values), (float(np.std(values, ddof=1)) if len(values) > 1 else None)

    def class_means(self) -> dict[str, float]:
        if self.classes:
            return dict(self.classes)
        names = {c for r in self.runs for c in r.classes}
        return {c: float(np.mean([r.classes[c] for r in self.runs if c in r.classes])) for c in names}

    def key(self) -> tuple:
        return (self.benchmark, self.architecture, self.host, self.aux, self.scale, self.eval_split,
                tuple(sorted(self.axes.items())))


class Reference(_Strict):
    format: Literal["udabench-reference/1"]
    name: str = Field(min_length=1)
    description: str = ""
    tolerance: Sourced | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    cells: list[RefCell] = Field(min_length=1)
    path: str = Field("", exclude=True)

    @field_validator("environment")
    @classmethod
    def _env_source(cls, v: dict[str, str]) -> dict[str, str]:
        if v and not v.get("source"):
            raise ValueError("an environment needs a 'source' key saying where its values come from")
        return v

    def pooled(self) -> tuple[float, int] | None:
        """The pooled seed std and its degrees of freedom over the entries that have a spread."""
        ss, dfs = 0.0, 0
        for c in self.cells:
            _, n, std = c.summary()
            if c.compare and std is not None and n and n >= 2:
                ss += (n - 1) * std ** 2
                dfs += n - 1
        return (math.sqrt(ss / dfs), dfs) if dfs else None


# --------------------------------------------------------------------------------------------------
# reading a reference: a YAML file, or a committed results table

def load_reference(path: str | Path) -> Reference:
    """A reference from a YAML file (format above), or a committed results table: a report folder, its
    tables/trials.csv, or REV:reports/<study> as committed at a git revision."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".csv" or (re.match(r"^[0-9a-fA-F]{7,40}:", str(path)) and not p.exists()):
        ref = table_reference([path], name=str(path))
    elif not p.is_file():
        raise ReferenceError(f"--against {path}: no such file; expected a reference YAML file (references/"
                             f"*.yaml), a report folder (reports/<study>), its tables/trials.csv, or "
                             f"REV:reports/<study>")
    else:
        ref = _load_yaml(p)
    ref.path = str(path)
    return ref


def _load_yaml(p: Path) -> Reference:
    import yaml

    text = p.read_text()
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ReferenceError(f"{p}: {where}not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ReferenceError(f"{p}: line 1: expected a mapping with format: {FORMAT}, name and cells; "
                             f"got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise ReferenceError(f"{p}: line {_lines(node).get(('format',), 1)}: field format: expected "
                             f"'{FORMAT}', got {raw.get('format')!r}")
    try:
        ref = Reference.model_validate(raw)
    except ValidationError as e:
        lines = _lines(node)
        problems = []
        for err in e.errors()[:5]:
            loc = tuple(err["loc"])
            loc = tuple(x for x in loc if not (isinstance(x, str) and x in ("int", "str", "float")))
            line = next((lines[loc[:k]] for k in range(len(loc), 0, -1) if loc[:k] in lines), 1)
            fieldname = ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in loc).replace(".[", "[")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field; expected one of: {', '.join(_fields_at(loc))}"
            elif err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {err['input']!r})"
            problems.append(f"{p}: line {line}: field {fieldname or '(top)'}: {msg}")
        raise ReferenceError("\n".join(problems)) from None
    ref.path = str(p)
    return ref


def _fields_at(loc: tuple) -> list[str]:
    """The valid field names where an unknown field was found."""
    model: type[BaseModel] = Reference
    for x in loc[:-1]:
        if isinstance(x, int):
            continue
        model = {"cells": RefCell, "runs": RefRun, "tolerance": Sourced}.get(x, model)
    return [f for f in model.model_fields if f != "path"]


def _lines(node, path: tuple = ()) -> dict[tuple, int]:
    """Path in the YAML document (keys and list indices) -> its line number (1-based)."""
    out: dict[tuple, int] = {path: node.start_mark.line + 1} if node is not None else {}
    if node is None:
        return out
    if node.id == "mapping":
        for k, v in node.value:
            out[path + (k.value,)] = k.start_mark.line + 1
            out.update({p: n for p, n in _lines(v, path + (k.value,)).items() if p != path + (k.value,)})
    elif node.id == "sequence":
        for i, v in enumerate(node.value):
            out.update(_lines(v, path + (i,)))
    return out


def _provenance(text: str) -> dict[str, str]:
    """The `- `key`: value` lines of a report page's Provenance section."""
    section = text.split("## Provenance", 1)[1] if "## Provenance" in text else ""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^- `([^`]+)`: (.*)$", section, re.M)}


def _read_table(arg: str | Path) -> tuple[str, str, str, str]:
    """(trials.csv text, README.md text, study name, label) of a report folder or its trials.csv, in
    the working tree or, written `REV:path`, as committed at git revision REV (e.g. 68c59eb:reports/gap)."""
    import subprocess

    text = str(arg)
    rev = re.match(r"^([0-9a-fA-F]{7,40}):(.+)$", text)
    if rev and not Path(text).exists():
        commit, path = rev.groups()
        folder = Path(path) if not path.endswith(".csv") else Path(path).parent.parent

        def show(p: Path) -> str:
            done = subprocess.run(["git", "show", f"{commit}:{p.as_posix()}"], capture_output=True, text=True)
            if done.returncode:
                raise ReferenceError(f"{commit}:{p}: not in git ({done.stderr.strip().splitlines()[-1:]}); "
                                     f"expected REV:reports/<study> of a commit that has that report")
            return done.stdout
        return (show(folder / "tables" / "trials.csv"), show(folder / "README.md"), folder.name,
                f"{commit}:{(folder / 'tables' / 'trials.csv').as_posix()}")
    table = Path(arg)
    if table.is_dir():
        table = table / "tables" / "trials.csv"
    if not table.is_file():
        raise ReferenceError(f"{table}: no such file; expected a report folder (reports/<study>), its "
                             f"tables/trials.csv, or REV:reports/<study> for a committed one")
    readme = table.parent.parent / "README.md"
    return (table.read_text(), readme.read_text() if readme.is_file() else "", table.parent.parent.name,
            str(table))


def _study_setup(study: str, scale: str, table: str) -> tuple[str, str, str]:
    """(benchmark, evaluation split, headline metric) of a study's runs at a scale, from its file."""
    from harness.study.load import load_study

    files = [f for f in (Path("studies") / f"{study}.yaml", Path("studies") / f"{study}.yml") if f.is_file()]
    if not files:
        raise ReferenceError(f"{table}: cannot tell the benchmark of study '{study}': no studies/{study}.yaml "
                             f"here; expected to run from the project root, or a YAML reference file")
    st = load_study(files[0], scale=scale)
    trials = st.trials()
    cfg = trials[0].config if trials else st.resolve({})  # a search study: its base config
    protocol = cfg.eval.protocol
    if cfg.data.source.name == "synthia" and protocol == "19":
        protocol = "16"
    return benchmark_name(cfg.data.source.name, cfg.data.source.domain, cfg.data.target.name,
                          cfg.data.target.domain), cfg.data.val.split, HEADLINE[protocol]


def benchmark_name(source: str, source_domain: Any, target: str, target_domain: Any) -> str:
    def side(name: str, domain: Any) -> str:
        return f"{name}:{domain}" if domain not in (None, "", "None", MISSING) else name

    return f"{side(source, source_domain)}->{side(target, target_domain)}"


def table_reference(tables: Iterable[str | Path], name: str, description: str = "") -> Reference:
    """A reference from committed results tables (a report's tables/trials.csv; the environment from
    the report's README.md Provenance): one entry per cell with every run. A cell and seed found in
    two tables with equal values counts once; with different values it is an error."""
    cells: dict[tuple, RefCell] = {}
    seen: dict[tuple, tuple[float, str]] = {}
    for arg in tables:
        csv_text, readme, study, table = _read_table(arg)
        df = pd.read_csv(io.StringIO(csv_text), dtype=str)
        need = ["run_id", "architecture", "host", "aux", "seed"]
        missing = [c for c in need if c not in df]
        if missing:
            raise ReferenceError(f"{table}: line 1: no column '{missing[0]}'; expected a trials.csv of "
                                 f"`udabench report` (columns {', '.join(need)}, metrics)")
        env = _provenance(readme)
        scale = env.pop("scale", "")
        if not scale or "," in scale:
            raise ReferenceError(f"{table}: its report's README.md Provenance: expected one `scale`, "
                                 f"got {scale or 'none'!r}")
        env = {k: v for k, v in env.items() if k in ENV_KEYS}
        benchmark, split, metric = _study_setup(study, scale, table)
        if metric not in df:
            raise ReferenceError(f"{table}: line 1: no column '{metric}', the study's headline metric")
        axes = [c for c in df.columns if c.startswith("axis:")]
        for i, row in df.iterrows():
            value = pd.to_numeric(pd.Series([row[metric]]), errors="coerce").iloc[0]
            if not np.isfinite(value):
                raise ReferenceError(f"{table}: line {i + 2}: column {metric}: expected a number, got {row[metric]!r}")
            classes = {c: round(float(row[iou_metric(c)]), 6) for c in CLASSES
                       if iou_metric(c) in df and np.isfinite(pd.to_numeric(row[iou_metric(c)], errors="coerce"))}
            seed = str(row["seed"])
            run = RefRun(seed=seed, value=round(float(value), 6), classes=classes, environment=env,
                         run_id=str(row["run_id"]), source=str(table))
            cell = RefCell(benchmark=benchmark, architecture=row["architecture"], host=row["host"],
                           aux=row["aux"], scale=scale, eval_split=split, metric=metric,
                           axes={a[5:]: str(row[a]) for a in axes if str(row[a]) not in ("–", "nan")},
                           method=f"{row['host']}" + ("" if row["aux"] == NO_AUX else f" + {row['aux']}"),
                           source=f"{study} study at scale {scale}: {table}", runs=[run])
            if (cell.key(), seed) in seen:
                old, where = seen[(cell.key(), seed)]
                if abs(old - value) > 1e-6:
                    raise ReferenceError(f"{table}: line {i + 2}: seed {seed} of {cell.method} "
                                         f"({cell.architecture}) is {value:.4f} here and {old:.4f} in {where}: "
                                         f"two different runs of one setting; export them as separate references")
                continue
            seen[(cell.key(), seed)] = (float(value), str(table))
            if cell.key() in cells:
                cells[cell.key()].runs.append(run)
                if table not in cells[cell.key()].source:
                    cells[cell.key()].source += f"; {study} study at scale {scale}: {table}"
            else:
                cells[cell.key()] = cell
    return Reference(format=FORMAT, name=name, description=description, cells=list(cells.values()))


def dump_reference(ref: Reference, out: Path, command: str) -> Path:
    """Write a reference as YAML (the format above), headed by the command that made it."""
    import yaml

    data = ref.model_dump(exclude_none=True, exclude_defaults=False)
    for cell in data["cells"]:
        for k in ("classes", "environment", "axes", "note"):
            if not cell.get(k):
                cell.pop(k, None)
        cell.pop("compare") if cell.get("compare") else None
    if not data.get("environment"):
        data.pop("environment", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    out.write_text(f"# Generated by `{command}`; regenerate rather than edit (references/README.md).\n{text}")
    return out


# --------------------------------------------------------------------------------------------------
# the comparison

@dataclass
class Band:
    low: float
    high: float
    rule: str          # how it was made, for the table


def band(cell: RefCell, ref: Reference) -> Band | None:
    """The 95% prediction interval for one new run of the cell (see the module docstring)."""
    from scipy.special import stdtrit

    mean, n, std = cell.summary()
    own = (std, (n or 1) - 1) if std is not None else None
    pooled = ref.pooled()
    spread = own if own and own[1] >= 2 else pooled or own
    if spread is not None:
        s, df = spread
        half = float(stdtrit(df, 0.975)) * s * math.sqrt(1 + 1 / (n or 1))
        which = "own" if spread is own else "pooled"
        n_text = f"n={n}" if n else "n not stated: taken as 1"
        return Band(mean - half, mean + half, f"95% PI, {which} s={s:.2f} (df={df}), {n_text}")
    if ref.tolerance is not None:
        t = ref.tolerance.value
        return Band(mean - t, mean + t, f"± tolerance {t:g} (no seed spread)")
    return None


def run_info(raw: pd.DataFrame) -> pd.DataFrame:
    """Per run (`run_id`): benchmark, scale, evaluation split and the environment tags, from the raw
    `search_runs` frame of a study."""
    def col(name: str) -> pd.Series:
        return raw[name].fillna(MISSING).astype(str) if name in raw else pd.Series(MISSING, raw.index)

    out = pd.DataFrame({"run_id": raw["run_id"].astype(str)})
    names = [col(f"params.data.{side}.{k}") for side in ("source", "target") for k in ("name", "domain")]
    out["benchmark"] = [benchmark_name(*v) for v in zip(*names)]
    out["scale"] = col("tags.scale")
    split = col("params.data.val.split")
    out["eval_split"] = split.where(split != MISSING, "val")
    for key in ENV_KEYS:
        out[key] = col(f"tags.{key}")
    return out.set_index("run_id")


@dataclass
class Flag:
    kind: str          # "outside" | "collapse"
    text: str


@dataclass
class StudyCheck:
    study: str
    table: Table | None
    compared: int = 0
    unmatched: int = 0
    flags: list[Flag] = field(default_factory=list)
    env: list[str] = field(default_factory=list)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def check_study(ref: Reference, data: StudyData, raw: pd.DataFrame) -> StudyCheck:
    """Every run of the study against its cell's reference entries: band, collapsed classes, same-seed
    difference; and the environment differences per cell."""
    info = run_info(raw)
    runs = data.runs.join(info, on="run_id")
    index: dict[tuple, list[RefCell]] = {}
    for c in ref.cells:
        index.setdefault(c.key(), []).append(c)
    rows, flags, env_lines = [], [], []
    compared = unmatched = 0
    groups: dict[tuple, list[int]] = {}
    for i, r in runs.iterrows():
        axes = tuple(sorted((a[5:], str(r[a])) for a in data.axes if str(r[a]) != "–"))
        key = (r["benchmark"], r["architecture"], r["host"], r["aux"], r["scale"], r["eval_split"], axes)
        cells = index.get(key, [])
        if not cells:
            unmatched += 1
            continue
        groups.setdefault(key, []).append(i)
        compared += 1
        who = " ".join([r["architecture"], r["host"], *([] if r["aux"] == NO_AUX else [r["aux"]]),
                        *(f"{k}={v}" for k, v in axes), f"seed {r['seed']}"])
        for cell in cells:
            value = float(r[cell.metric])
            b = band(cell, ref) if cell.compare else None
            mean, n, _ = cell.summary()
            if not cell.compare:
                verdict = "context only"
            elif b is None:
                verdict = "no band"
            elif b.low <= value <= b.high:
                verdict = "inside"
            else:
                verdict = "OUTSIDE"
                flags.append(Flag("outside", f"{who}: {METRIC_LABEL[cell.metric]} {value:.2f} outside "
                                             f"[{b.low:.2f}, {b.high:.2f}] of {cell.method or cell.source} "
                                             f"(reference {mean:.2f}; {b.rule})"))
            same = [x.value for x in cell.runs if x.seed is not None and str(x.seed) == str(r["seed"])]
            collapsed = []
            if cell.compare:
                means = cell.class_means()
                for ci in data.classes:
                    name = CLASSES[ci]
                    got = r[iou_metric(name)]
                    lows = [x.classes[name] for x in cell.runs if name in x.classes]
                    if (name in means and means[name] >= WELL_ABOVE and not (lows and min(lows) < COLLAPSE_BELOW)
                            and not np.isnan(got) and got < COLLAPSE_BELOW):
                        collapsed.append(f"{name} {got:.1f} (ref {means[name]:.1f})")
                if collapsed:
                    flags.append(Flag("collapse", f"{who}: collapsed against {cell.method or cell.source}: "
                                                  + ", ".join(collapsed)))
            rows.append({
                "architecture": r["architecture"], "host": r["host"],
                "aux task": "–" if r["aux"] == NO_AUX else r["aux"],
                **{a[5:]: r[a] for a in data.axes}, "seed": r["seed"],
                "reference": cell.method or "–", "metric": METRIC_LABEL[cell.metric],
                "run": value, "ref mean": mean, "ref n": n if n else "–",
                "band low": b.low if b else np.nan, "band high": b.high if b else np.nan,
                "band rule": b.rule if b else ("not compared: " + (cell.note or "context")
                                               if not cell.compare else "no spread, no tolerance"),
                "verdict": verdict, "Δ same seed": (value - same[0]) if same else np.nan,
                "collapsed classes": "; ".join(collapsed) or "–", "source": cell.source})
    for key, members in groups.items():
        cells = [c for c in index[key] if c.compare]
        diffs = env_differences(runs.loc[members], cells, ref)
        if diffs:
            label = " ".join([key[1], key[2], *([] if key[3] == NO_AUX else ["+", key[3]]),
                              *(f"{k}={v}" for k, v in key[6])])
            env_lines.append(f"{label} ({key[0]}, {key[4]}): " + "; ".join(diffs))
    if not rows:
        return StudyCheck(data.name, None, compared, unmatched, flags, env_lines)
    numeric = pd.DataFrame(rows)
    display = numeric.drop(columns=["source"]).copy()
    for c in ("run", "ref mean"):
        display[c] = numeric[c].map(lambda v: _fmt(v, 2))
    display["band"] = [f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}]" if not np.isnan(lo) else "–"
                       for lo, hi in zip(numeric["band low"], numeric["band high"])]
    display["Δ same seed"] = numeric["Δ same seed"].map(lambda v: "–" if np.isnan(v) else f"{v:+.2f}")
    display = display.drop(columns=["band low", "band high"])
    order = [c for c in display.columns if c not in ("band", "band rule", "verdict", "Δ same seed",
                                                     "collapsed classes")]
    display = display[[*order, "band", "verdict", "Δ same seed", "collapsed classes", "band rule"]]
    note = _note(ref, unmatched, env_lines)
    table = Table("against", f"Against the reference `{ref.name}` ({ref.path})", display.astype(str),
                  numeric, note, labels=["architecture", "host", "aux task", "reference", "verdict",
                                         "collapsed classes", "band rule"])
    return StudyCheck(data.name, table, compared, unmatched, flags, env_lines)


def env_differences(runs: pd.DataFrame, cells: list[RefCell], ref: Reference) -> list[str]:
    """'torch: 2.5.1 here, 1.7.1+cu110 in the reference' for each key both sides recorded."""
    out = []
    for key in ENV_KEYS:
        here = {v for raw in runs[key] for v in str(raw).split(", ") if v and v != MISSING}
        there: set[str] = set()
        for c in cells:
            if c.runs and any(key in x.environment for x in c.runs):
                there |= {v for x in c.runs for v in x.environment.get(key, "").split(", ") if v}
            elif key in c.environment:
                there.add(c.environment[key])
            elif key in ref.environment:
                there.add(ref.environment[key])
        if here and there and here != there:
            out.append(f"{key}: {', '.join(sorted(here))} here, {', '.join(sorted(there))} in the reference")
    return out


def _note(ref: Reference, unmatched: int, env_lines: list[str]) -> str:
    parts = [
        "Band: the 95% prediction interval for one new run, reference mean ± t(0.975, df) · s · √(1 + 1/n), "
        "with s the seed standard deviation of the reference entry, else pooled over the reference's "
        "entries that have one (one seed variance assumed), else the reference's stated tolerance "
        "(not a statistical interval). OUTSIDE: the run is outside its band. Collapsed: IoU below "
        f"{COLLAPSE_BELOW:g} where the reference's mean IoU is at least {WELL_ABOVE:g} and no reference run "
        f"is below {COLLAPSE_BELOW:g}. Δ same seed: the run minus the reference run of the same seed."]
    if unmatched:
        parts.append(f"{unmatched} run(s) have no cell in the reference (benchmark, architecture, host, aux "
                     "task, scale, evaluation split and axes must all match).")
    if env_lines:
        parts.append("Environment differences (MLflow tags here, the reference's recorded environment): "
                     + " | ".join(env_lines) + ".")
    else:
        parts.append("Environment: no difference in " + ", ".join(ENV_KEYS) + " where both sides recorded them.")
    return " ".join(parts)


class Against:
    """What `build_reports` compares each study with, and what it found (for the console summary)."""

    def __init__(self, reference: Reference):
        self.reference = reference
        self.checks: list[StudyCheck] = []

    def check(self, data: StudyData, raw: pd.DataFrame) -> list[Table]:
        result = check_study(self.reference, data, raw)
        self.checks.append(result)
        return [result.table] if result.table is not None else []

    def summary(self) -> list[str]:
        ref = self.reference
        lines = [f"against {ref.path} ({ref.name}, {len(ref.cells)} reference entries):"]
        for c in self.checks:
            outside = sum(f.kind == "outside" for f in c.flags)
            collapse = sum(f.kind == "collapse" for f in c.flags)
            lines.append(f"  {c.study}: {c.compared} run(s) compared, {c.unmatched} without a reference cell; "
                         f"{outside} outside the band, {collapse} with collapsed classes, environment "
                         f"differs in {len(c.env)} cell(s)")
            items = [f"    {f.kind.upper()}: {f.text}" for f in c.flags] + [f"    ENVIRONMENT: {e}" for e in c.env]
            lines += items[:SHOWN]
            if len(items) > SHOWN:
                lines.append(f"    ... and {len(items) - SHOWN} more in {c.study}/tables/against.csv")
        return lines

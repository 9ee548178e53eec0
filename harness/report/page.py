"""Reports: the finished MLflow runs of a study -> pandas -> tables, figures and one page per study.

`build_reports(studies, ReportOptions(...))` reads every run of each study (experiment = study name)
with one `mlflow.search_runs` call, refuses to mix runs of different data (`data_hash`), code
(`git_commit`) or scale unless told to, and writes under `<out>/<study>/`:

- `tables/main.{md,tex,csv}`: rows = architecture x host x auxiliary task (x the study's other axes),
  columns = per-class IoU and mIoU (19 classes; 16 and mIoU16/mIoU13 for SYNTHIA protocols),
  mean +- std over seeds with n, and the paired gain over the host without an auxiliary task;
- `tables/gains.{md,tex,csv}`: that paired difference over common seeds with a 95% t-interval;
- `tables/ablation.{md,tex,csv}`: the headline mIoU against the study's varied `axis.*` tags;
- `tables/cost.{md,tex,csv}`: step time, throughput and peak memory relative to the host;
- `tables/trials.csv`: one row per run (the numbers every table is computed from);
- `figures/*.{png,svg}` (seaborn, Agg): mIoU against each ablation axis with seed bands, per-class
  gain bars, training curves from the metric history;
- `README.md`, embedding all of the above so GitHub renders it,

and `<out>/metrics.json` (headline numbers per study) for `dvc metrics`. A study folder is built in a
temporary folder and renamed into place at the end, so a failed report never leaves half a page.
IoU, mIoU and pixel accuracy are in percent, as the training engine logs them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.labels import CLASSES, SYNTHIA16

# --------------------------------------------------------------------------------------------------
# names

HEADLINE = {"19": "target_miou", "16": "target_miou16", "13": "target_miou13"}
METRIC_LABEL = {"target_miou": "mIoU", "target_miou16": "mIoU16", "target_miou13": "mIoU13",
                "pixel_acc": "pixel acc."}
PERCENT_METRICS = ("target_miou", "target_miou16", "target_miou13", "pixel_acc")  # logged in %
COST_METRICS = ("step_time", "throughput", "peak_mem_mb")
IDENTITY = ("architecture", "host", "aux")
NO_AUX = "none"
HOST_ORDER = ("source_only", "dacs", "oracle")
KNOWN_ORDER = ("tiny", "small", "base", "large", "huge")  # Rebuilder presets and similar sizes
MISSING = "<missing>"
PROVENANCE_TAGS = ("data_hash", "git_commit", "scale")


def iou_metric(class_name: str) -> str:
    """The MLflow metric name of a class's IoU: `iou/<class name, spaces as _>`."""
    return "iou/" + class_name.replace(" ", "_")


class ReportError(ValueError):
    """Bad report input (unknown study, no runs, mixed data/code): the message says what and where."""


@dataclass
class ReportOptions:
    out: Path = Path("reports")
    tracking_uri: str | None = None
    allow_mixed: bool = False
    scale: str | None = None        # keep only runs tagged with this scale ...
    study_scales: dict[str, str] = field(default_factory=dict)  # ... or this one for a study
    figures: bool = True
    curves: bool = True             # training curves need the metric history (one query per metric)
    max_curve_groups: int = 16      # training-curve figures show at most this many groups

    def scale_of(self, study: str) -> str | None:
        return self.study_scales.get(study, self.scale)


@dataclass
class StudyData:
    """One study's finished runs in tidy form: one row per run, identity/axis/seed/metric columns."""

    name: str
    runs: pd.DataFrame                       # tidy rows: run_id, trial_id, identity, axes, seed, metrics
    axes: list[str]                          # ablation axes (varied, not implied by the identity)
    protocol: str                            # "19" | "16" | "13"
    metric: str                              # headline metric name
    classes: list[int]                       # class indices shown in the main table
    excluded: dict[str, int] = field(default_factory=dict)  # why runs were left out -> count
    mixed: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # tag -> value -> trial ids
    provenance: dict[str, str] = field(default_factory=dict)
    description: str = ""
    cut: str = ""

    @property
    def group_cols(self) -> list[str]:
        return [*IDENTITY, *self.axes]


# --------------------------------------------------------------------------------------------------
# reading MLflow

def resolve_tracking_uri(uri: str | None = None) -> str:
    """`--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the project's default store."""
    if uri:
        return uri
    from harness.tracking import tracking_uri

    return tracking_uri()  # $MLFLOW_TRACKING_URI, else <project>/mlruns/mlflow.db


def _check_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"tracking store {uri}: no such file (run a study first, or pass "
                              f"--tracking-uri / set MLFLOW_TRACKING_URI)")


def load_runs(studies: Sequence[str] | None, tracking_uri: str) -> pd.DataFrame:
    """All runs (any status) of the given studies, or of every experiment holding study runs."""
    import mlflow
    from mlflow import MlflowClient

    from harness.registry import closest

    _check_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    if studies:
        unknown = [s for s in studies if s not in experiments]
        if unknown:
            known = sorted(n for n in experiments if n != "Default")
            raise ReportError(
                f"no study named '{unknown[0]}'{closest(unknown[0], known)} in {tracking_uri}; "
                f"studies with runs there: {', '.join(known) or '(none)'}")
        ids = [experiments[s] for s in studies]
    else:
        ids = list(experiments.values())
    if not ids:
        return pd.DataFrame()
    saved = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri sets it for the whole process
    mlflow.set_tracking_uri(tracking_uri)
    try:
        df = mlflow.search_runs(experiment_ids=ids, output_format="pandas")
    finally:
        mlflow.set_tracking_uri(saved)  # None unsets: a later study run in this process uses its own store
    if df.empty:
        return df
    names = {v: k for k, v in experiments.items()}
    df["study"] = df["experiment_id"].map(names)
    if not studies:  # keep the runs of studies (tag `study`), not stray runs in other experiments
        df = df[df["tags.study"].notna()] if "tags.study" in df else df.iloc[0:0]
    return df


def metric_history(run_ids: Sequence[str], keys: Iterable[str], tracking_uri: str) -> pd.DataFrame:
    """Metric history (run_id, key, step, value) of many runs: one query per key on a SQL store,
    `MlflowClient.get_metric_history` per run and key elsewhere (e.g. an MLflow server)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    rows: list[tuple[str, str, int, float]] = []
    run_ids = list(run_ids)
    for key in keys:
        if hasattr(store, "get_metric_history_bulk"):
            for i in range(0, len(run_ids), 500):
                chunk = run_ids[i:i + 500]
                for m in store.get_metric_history_bulk(chunk, key, max_results=10_000_000):
                    rows.append((m.run_id, key, m.step, m.value))
        else:
            for rid in run_ids:
                rows.extend((rid, key, m.step, m.value) for m in client.get_metric_history(rid, key))
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


# --------------------------------------------------------------------------------------------------
# tidy form

def _aux_labels(df: pd.DataFrame) -> pd.Series:
    """'mfm', 'mfm+mim' or 'none': the auxiliary tasks whose `method.aux.<task>.*` params a run has."""
    tasks: dict[str, list[str]] = {}
    for c in df.columns:
        m = re.match(r"params\.method\.aux\.([^.]+)\.", c)
        if m:
            tasks.setdefault(m.group(1), []).append(c)
    label = pd.Series("", index=df.index, dtype=object)
    for task in sorted(tasks):
        has = df[tasks[task]].notna().any(axis=1)
        label = label.where(~has, label.map(lambda v: f"{v}+" if v else "") + task)
    return label.replace("", NO_AUX)


def _param(df: pd.DataFrame, key: str, default: str = MISSING) -> pd.Series:
    col = f"params.{key}"
    if col in df:
        return df[col].fillna(default).astype(str)
    return pd.Series(default, index=df.index, dtype=object)


def _axis_param(df: pd.DataFrame, axis: str) -> str | None:
    """The config path an axis sets: the axis name itself when it is a path, else the study alias
    (harness.study.AXES: `mask_ratio` -> `method.aux.mfm.options.mask_ratio`)."""
    if f"params.{axis}" in df:
        return axis
    from harness.study import AXES

    path = AXES.get(axis)
    return path if path and f"params.{path}" in df else None


def _axis_applies(df: pd.DataFrame, axis: str) -> pd.Series:
    """Whether an axis applies to each run: a run without the axis's parameter (a host-only run in a
    mask-ratio grid) gets no axis value, so its trials pool into one baseline."""
    path = _axis_param(df, axis)
    if path is not None:
        return df[f"params.{path}"].notna()
    last = axis.split(".")[-1]
    cols = [c for c in df.columns if c.startswith("params.method.aux.") and c.split(".")[-1] == last]
    if not cols:
        return pd.Series(True, index=df.index)
    return df[cols].notna().any(axis=1)


_RESULT_NEUTRAL = {"name", "output", "log_interval", "device", "threads", "checkpoint_interval"}


def _ignored_param(key: str) -> bool:
    """Config keys that may differ between the seeds of one setting: the seed, names and paths."""
    return key in _RESULT_NEUTRAL or "seed" in key.split(".")[-1] or key.endswith(".root")


def _varies_within(df: pd.DataFrame, col: str, by: list[str]) -> bool:
    return bool((df.groupby(by, dropna=False)[col].nunique(dropna=False) > 1).any())


@dataclass
class Selection:
    """Which study to report: a name (every run of the experiment) or a study file (only the runs of
    the file's current trials, by config hash, so runs of an older version of the study are left out)."""

    name: str
    path: Path | None = None
    hashes: set[tuple[str, str]] | None = None   # (scale, config_hash) of the file's trials
    description: str = ""
    cut: str = ""  # which `at_scale` cut of the grid the reported scales run


def is_study_file(arg: str) -> bool:
    return Path(arg).suffix in (".yaml", ".yml") or Path(arg).is_file()


def select(path: str | Path, scales: Sequence[str]) -> Selection:
    """The runs a study file stands for: its trials' config hashes at each of `scales`."""
    from harness.study import load_study

    studies = {scale: load_study(path, scale=scale) for scale in scales}
    first = next(iter(studies.values()))
    sel = Selection(first.name, Path(path), None, (first.spec.description or "").strip())
    if not first.is_search:
        sel.hashes = {(scale, t.hash) for scale, st in studies.items() for t in st.trials()}
    sel.cut = " ".join(_cut(st) for st in studies.values() if st.scale in st.spec.at_scale)
    return sel


def _cut(study) -> str:
    """'At scale cpu this is the study's `at_scale.cpu` cut: ...' (what the page leaves out)."""
    from harness.config import load_yaml
    from harness.study import grid_points

    changes = study.spec.at_scale[study.scale]
    kept = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in changes.grid.items())
    if "num_samples" in changes.search:
        kept = "; ".join(filter(None, [kept, f"{changes.search['num_samples']} search samples"]))
    text = f"At scale `{study.scale}` this is the study's `at_scale.{study.scale}` cut ({kept})"
    if not study.is_search:
        grid = load_yaml(study.path).get("grid")
        full = len(grid_points(grid if isinstance(grid, list) else [grid]))
        text += f": {len(study.trials())} of the grid's {full} trials"
    return text + "; the description above is the whole study."


def tidy(df: pd.DataFrame, study: str, opts: ReportOptions, selection: Selection | None = None
         ) -> StudyData:
    """One study's raw `search_runs` frame -> StudyData (finished runs only; checks mixing)."""
    if df.empty:
        raise ReportError(f"study '{study}': no runs in the tracking store")
    scale = opts.scale_of(study)
    if scale is not None:
        df = df[df["tags.scale"] == scale] if "tags.scale" in df else df.iloc[0:0]
    excluded = {f"{k.lower()}": int(v) for k, v in
                df.loc[df["status"] != "FINISHED", "status"].value_counts().items()}
    if selection is not None and selection.hashes is not None and "tags.config_hash" in df:
        current = pd.Series([(s, h) in selection.hashes for s, h in
                             zip(df.get("tags.scale", pd.Series("", df.index)), df["tags.config_hash"])],
                            index=df.index)
        if (~current).any():
            excluded[f"not trials of {selection.path} now"] = int((~current & (df["status"] == "FINISHED")).sum())
        df = df[current]
    df = df[df["status"] == "FINISHED"].copy()
    if "tags.config_hash" in df:  # a trial run again (--force): its latest finished run stands for it
        df = df.sort_values("start_time", kind="stable")
        scale = df["tags.scale"].fillna("") if "tags.scale" in df else ""
        again = (df["tags.config_hash"].fillna(df["run_id"]) + "|" + scale).duplicated(keep="last")
        if again.any():
            excluded["superseded by a later run of the same config"] = int(again.sum())
        df = df[~again]
    if df.empty:
        what = f" at scale '{scale}'" if scale else ""
        raise ReportError(f"study '{study}': no finished runs{what} "
                          f"(other runs: {excluded or 'none'})")
    trial = df["run_id"].astype(str)
    for tag in ("tags.trial_id", "tags.trial_name"):  # the most readable name a run has
        if tag in df:
            trial = df[tag].fillna(trial).astype(str)

    mixed: dict[str, dict[str, list[str]]] = {}
    for tag in PROVENANCE_TAGS:
        values = df[f"tags.{tag}"].fillna(MISSING) if f"tags.{tag}" in df else pd.Series(MISSING, df.index)
        if values.nunique() > 1:
            mixed[tag] = {str(v): sorted(trial[values == v]) for v in sorted(values.unique())}

    out = pd.DataFrame(index=df.index)
    out["run_id"] = df["run_id"]
    out["trial_id"] = trial
    out["architecture"] = _param(df, "model.arch") + "/" + _param(df, "model.backbone")
    out["host"] = _param(df, "method.host")
    out["aux"] = _aux_labels(df)
    seed = _param(df, "seed", default="")
    if (seed == "").all() and "tags.axis.seed" in df:
        seed = df["tags.axis.seed"].fillna("").astype(str)
    out["seed"] = seed

    # ablation axes: the study's axis.* tags that vary and are not implied by the identity columns;
    # an implied axis stays when its names say more than the identity (task=mic for aux task mim)
    axes: list[str] = []
    identity = out["architecture"] + " " + out["host"] + " " + out["aux"]
    for c in sorted(c for c in df.columns if c.startswith("tags.axis.")):
        name = c[len("tags.axis."):]
        if "seed" in name.split(".")[-1].lower():
            continue
        col = f"axis:{name}"
        values = df[c].where(_axis_applies(df, name)).fillna("–").astype(str)
        if values.nunique() < 2:
            continue
        out[col] = values
        implied = not _varies_within(out, col, list(IDENTITY))
        if not implied or any(v != "–" and v not in i for v, i in zip(values, identity)):
            axes.append(col)
        else:
            out = out.drop(columns=col)

    # runs of one setting (same identity and axes) must share their config except for the seed:
    # otherwise the study changed between runs (e.g. more iterations) and old runs are still there
    params = [c for c in df.columns if c.startswith("params.") and not _ignored_param(c[len("params."):])]
    if params:
        varying = df[params].fillna(MISSING).groupby([out[c] for c in [*IDENTITY, *axes]], dropna=False)
        counts = varying.nunique()
        for col in [c for c in params if (counts[c] > 1).any()][:3]:
            values = df[col].fillna(MISSING).astype(str)
            mixed[col] = {v: sorted(trial[values == v]) for v in sorted(values.unique())}
    if mixed and not opts.allow_mixed:
        lines = [f"study '{study}': refusing to put runs of different data, code, scale or config into "
                 f"one table (pass --allow-mixed to report them together"
                 f"{', or --scale to pick one scale' if 'scale' in mixed else ''}):"]
        for tag, groups in mixed.items():
            if tag.startswith("params."):
                lines.append(f"  runs of one setting differ in {tag[len('params.'):]}, which is not an axis "
                             f"of the study (runs of an older version of the study?):")
            for value, trials in groups.items():
                shown = "; ".join(trials[:6]) + (f"; ... ({len(trials)} runs)" if len(trials) > 6 else "")
                lines.append(f"  {tag.removeprefix('params.')} = {value}: {shown}")
        raise ReportError("\n".join(lines))

    protocols = set(_param(df, "eval.protocol", default="19"))
    if "synthia" in set(_param(df, "data.source.name")) and protocols <= {"19"}:
        protocols = {"16"}
    protocol = "16" if "16" in protocols else "13" if "13" in protocols else "19"
    classes = list(range(len(CLASSES))) if protocol == "19" else list(SYNTHIA16)

    metrics = [*PERCENT_METRICS, *(iou_metric(c) for c in CLASSES), *COST_METRICS]
    for m in metrics:
        col = f"metrics.{m}"
        values = pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, df.index)
        out[m] = values.astype(float)
    for c in df.columns:
        if c.startswith("metrics.loss/"):
            out[c[len("metrics."):]] = pd.to_numeric(df[c], errors="coerce")
    metric = HEADLINE[protocol]
    if out[metric].isna().all():
        raise ReportError(f"study '{study}': no finished run logged the metric '{metric}'")

    provenance = {}
    for tag in ("git_commit", "git_dirty", "data_hash", "scale", "device", "torch", "python"):
        col = f"tags.{tag}"
        if col in df:
            provenance[tag] = ", ".join(sorted(df[col].dropna().astype(str).unique())) or MISSING
    out = _sort(out, [c for c in axes])
    if "start_time" in df and "end_time" in df:
        spent = (df["end_time"] - df["start_time"]).dropna()
        if len(spent):
            span = df["end_time"].max() - df["start_time"].min()
            provenance["run time"] = (f"{spent.sum().total_seconds() / 60:.1f} min of trials in total "
                                      f"(median {spent.median().total_seconds():.0f} s per trial); "
                                      f"{span.total_seconds() / 60:.1f} min from the first start to the last end")
    return StudyData(name=study, runs=out.reset_index(drop=True), axes=axes, protocol=protocol,
                     metric=metric, classes=classes, excluded=excluded, mixed=mixed,
                     provenance=provenance, description=selection.description if selection else "",
                     cut=selection.cut if selection else "")


def _sort_key(values: pd.Series) -> pd.Series:
    """Sort numerically when every value is a number, by known size names, else alphabetically."""
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all() or (num.notna() | (values == "–")).all():
        return num.fillna(-np.inf)
    if values.isin(KNOWN_ORDER + ("–",)).all():
        return values.map(lambda v: -1 if v == "–" else KNOWN_ORDER.index(v))
    return values


def _sort(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    key = pd.DataFrame(index=df.index)
    key["a"] = df["architecture"]
    key["h"] = df["host"].map(lambda h: HOST_ORDER.index(h) if h in HOST_ORDER else len(HOST_ORDER))
    key["h2"] = df["host"]
    key["x"] = df["aux"].map(lambda a: "" if a == NO_AUX else a)
    for i, a in enumerate(axes):
        key[f"ax{i}"] = _sort_key(df[a])
    seed_num = pd.to_numeric(df["seed"], errors="coerce")
    key["s"] = seed_num if seed_num.notna().all() else df["seed"]
    order = key.sort_values(list(key.columns), kind="stable").index
    return df.loc[order]


# --------------------------------------------------------------------------------------------------
# statistics

def summarize(data: StudyData, metrics: Sequence[str]) -> pd.DataFrame:
    """mean, std (ddof 1) and n per group and metric: columns `<metric>:mean|std|n`."""
    g = data.runs.groupby(data.group_cols, sort=False, dropna=False)[list(metrics)]
    mean, std, n = g.mean(), g.std(ddof=1), g.count()
    out = pd.concat({"mean": mean, "std": std, "n": n}, axis=1)
    out.columns = [f"{m}:{stat}" for stat, m in out.columns]
    out["runs"] = data.runs.groupby(data.group_cols, sort=False, dropna=False).size()
    out["seeds"] = data.runs.groupby(data.group_cols, sort=False, dropna=False)["seed"].agg(
        lambda s: ",".join(dict.fromkeys(s)))
    return out.reset_index()


def _baseline_mask(runs: pd.DataFrame, row: pd.Series) -> pd.Series:
    return ((runs["architecture"] == row["architecture"]) & (runs["host"] == row["host"])
            & (runs["aux"] == NO_AUX))


def paired_gains(data: StudyData, metrics: Sequence[str]) -> pd.DataFrame:
    """For every group with an auxiliary task: the difference to its host without one (same
    architecture), paired over the seeds both have; mean, std, n and a 95% t-interval per metric.
    Runs repeated with one seed are averaged first."""

    runs = data.runs
    metrics = list(metrics)
    rows = []
    hosts = {k: g.groupby("seed")[metrics].mean()
             for k, g in runs[runs["aux"] == NO_AUX].groupby(["architecture", "host"])}
    for key, grp in runs[runs["aux"] != NO_AUX].groupby(data.group_cols, sort=False, dropna=False):
        rec: dict[str, Any] = dict(zip(data.group_cols, key if isinstance(key, tuple) else (key,)))
        b = hosts.get((rec["architecture"], rec["host"]))
        if b is None:  # no run of this host without an auxiliary task
            rows.append({**rec, "pairs": 0, "common_seeds": "", **{
                f"{m}:{k}": (0 if k == "gain_n" else np.nan)
                for m in metrics for k in ("gain", "gain_std", "gain_n", "ci_low", "ci_high")}})
            continue
        a = grp.groupby("seed")[metrics].mean()
        rec.update(_paired(a, b, metrics))
        rec["seeds_only_host"] = rec.pop("seeds_only_base")
        rows.append(rec)
    cols = [*data.group_cols, "pairs", "common_seeds"]
    return pd.DataFrame(rows, columns=None if rows else cols)


def _paired(a: pd.DataFrame, b: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    """a - b over their common seeds (rows = seeds): mean, std, n and a 95% t-interval per metric."""
    from scipy import stats

    common = a.index.intersection(b.index)
    diff = a.loc[common] - b.loc[common]
    n = diff.count()
    mean, sd = diff.mean(), diff.std(ddof=1)
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half[n < 2] = np.nan
    rec: dict[str, Any] = dict(pairs=len(common), common_seeds=",".join(map(str, common)),
                               seeds_only_aux=",".join(map(str, a.index.difference(b.index))),
                               seeds_only_base=",".join(map(str, b.index.difference(a.index))))
    for m in metrics:
        rec.update({f"{m}:gain": mean[m], f"{m}:gain_std": sd[m], f"{m}:gain_n": int(n[m]),
                    f"{m}:ci_low": mean[m] - half[m], f"{m}:ci_high": mean[m] + half[m]})
    return rec


LOWER_BOUND = "source_only"


def host_gains(data: StudyData, metrics: Sequence[str]) -> pd.DataFrame:
    """For a study that varies the host: every other host without an auxiliary task against
    `source_only` on the same architecture (and the same other axes), paired over common seeds."""
    runs = data.runs[data.runs["aux"] == NO_AUX]
    if runs.empty or runs["host"].nunique() < 2 or LOWER_BOUND not in set(runs["host"]):
        return pd.DataFrame()
    metrics = list(metrics)
    rest = [c for c in data.group_cols if c != "host"]
    rows = []
    for key, grp in runs.groupby(rest, sort=False, dropna=False):
        rec0 = dict(zip(rest, key if isinstance(key, tuple) else (key,)))
        base = grp[grp["host"] == LOWER_BOUND]
        if base.empty:
            continue
        b = base.groupby("seed")[metrics].mean()
        for host, hg in grp[grp["host"] != LOWER_BOUND].groupby("host", sort=False):
            rows.append({**rec0, "host": host, **_paired(hg.groupby("seed")[metrics].mean(), b, metrics)})
    return pd.DataFrame(rows)


def host_table(data: StudyData, gains: pd.DataFrame) -> Table:
    m = data.metric
    if gains.empty:
        return Table("hosts", f"Paired gain over {LOWER_BOUND}", pd.DataFrame(), pd.DataFrame())
    disp = _label_frame(gains.assign(aux=NO_AUX), data)
    disp["pairs"] = gains["pairs"].astype(int).astype(str)
    disp[f"Δ {METRIC_LABEL[m]} vs {LOWER_BOUND} [95% CI]"] = [
        gain_cell(r[f"{m}:gain"], r[f"{m}:ci_low"], r[f"{m}:ci_high"], int(r[f"{m}:gain_n"]))
        for _, r in gains.iterrows()]
    note = (f"Each host minus {LOWER_BOUND} (same architecture and axes), paired over the seeds both "
            "have; mean with a 95% t-interval. An interval above 0 is a gain beyond seed noise.")
    return Table("hosts", f"Paired gain over {LOWER_BOUND}", disp, gains.copy(), note, _labels(data))


def cost_table(data: StudyData) -> pd.DataFrame:
    """Mean cost per group and its ratio to the host without an auxiliary task (ratio of means)."""
    s = summarize(data, COST_METRICS)
    runs = data.runs
    base = runs[runs["aux"] == NO_AUX].groupby(["architecture", "host"])[list(COST_METRICS)].mean()
    ref = base.reindex(pd.MultiIndex.from_frame(s[["architecture", "host"]])).to_numpy()
    for i, m in enumerate(COST_METRICS):
        s[f"{m}:ratio"] = s[f"{m}:mean"].to_numpy() / ref[:, i]
    return s


# --------------------------------------------------------------------------------------------------
# formatting

_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
        "–": "--", "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


@dataclass
class Cell:
    """A table cell: text for Markdown/CSV and for LaTeX."""

    md: str
    tex: str

    def __str__(self) -> str:
        return self.md


def _num(x: float, signed: bool = False, digits: int = 1) -> str:
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def mean_std_cell(mean: float, std: float, n: int, n_full: int, digits: int = 1) -> Cell:
    """'45.2 ± 1.3', with '(n=2)' whenever the cell has fewer values than its row has runs."""
    if not n or np.isnan(mean):
        return Cell("–", "--")
    note = f" (n={n})" if n < n_full else ""
    if n > 1 and not np.isnan(std):
        return Cell(f"{_num(mean, digits=digits)} ± {_num(std, digits=digits)}{note}",
                    f"{_num(mean, digits=digits)} $\\pm$ {_num(std, digits=digits)}{note}")
    return Cell(f"{_num(mean, digits=digits)}{note}", f"{_num(mean, digits=digits)}{note}")


def gain_cell(mean: float, lo: float, hi: float, n: int, digits: int = 1) -> Cell:
    """'+2.3 [-0.4, +5.0] (n=3)'; no interval below two pairs; '–' without a host baseline."""
    if not n or np.isnan(mean):
        return Cell("–", "--")
    if n < 2 or np.isnan(lo):
        return Cell(f"{_num(mean, True, digits)} (n={n}, no CI)",
                    f"{_num(mean, True, digits)} (n={n}, no CI)")
    text = f"{_num(mean, True, digits)} [{_num(lo, True, digits)}, {_num(hi, True, digits)}] (n={n})"
    return Cell(text, text)


@dataclass
class Table:
    """One report table: a display frame of Cells/strings plus a numeric frame for CSV."""

    name: str
    title: str
    display: pd.DataFrame
    numeric: pd.DataFrame
    note: str = ""
    labels: Sequence[str] = ()      # left-aligned text columns (the rest are numbers)

    def markdown(self) -> str:
        frame = self.display.map(str)
        return frame.to_markdown(index=False, disable_numparse=True)

    def latex(self) -> str:
        frame = self.display.map(lambda c: c.tex if isinstance(c, Cell) else tex_escape(c))
        frame.columns = [tex_escape(c) for c in frame.columns]
        fmt = "".join("l" if c in self.labels else "r" for c in self.display.columns)
        body = frame.to_latex(index=False, escape=False, column_format=fmt)
        return f"% {self.title}\n% requires \\usepackage{{booktabs}}\n{body}"

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.name}.md").write_text(self.markdown() + "\n")
        (folder / f"{self.name}.tex").write_text(self.latex())
        self.numeric.to_csv(folder / f"{self.name}.csv", index=False, float_format="%.10g")


def _label_frame(df: pd.DataFrame, data: StudyData) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["architecture"] = df["architecture"]
    out["host"] = df["host"]
    out["aux task"] = df["aux"].map(lambda a: "–" if a == NO_AUX else a)
    for a in data.axes:
        out[a[len("axis:"):]] = df[a].map(_short)
    return out


def _short(value: str) -> str:
    """An axis value for display: a sampled float such as 1.252065381499947 as 1.252."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 6 and "." in value else value


def _labels(data: StudyData) -> list[str]:
    return ["architecture", "host", "aux task", *(a[len("axis:"):] for a in data.axes)]


def _gain_lookup(gains: pd.DataFrame, data: StudyData) -> dict[tuple, pd.Series]:
    if gains.empty:
        return {}
    return {tuple(r[c] for c in data.group_cols): r for _, r in gains.iterrows()}


def main_table(data: StudyData, summary: pd.DataFrame, gains: pd.DataFrame) -> Table:
    class_metrics = [iou_metric(CLASSES[i]) for i in data.classes]
    means = [data.metric] + (["target_miou13"] if data.protocol == "16" else [])
    n_full = int(summary["runs"].max())
    disp = _label_frame(summary, data)
    disp["n"] = summary["runs"].astype(int).astype(str)
    for m, c in zip(class_metrics, data.classes):
        disp[CLASSES[c]] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]))
                            for _, r in summary.iterrows()]
    for m in means:
        disp[METRIC_LABEL[m]] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]))
                                 for _, r in summary.iterrows()]
    lookup = _gain_lookup(gains, data)
    col = f"Δ {METRIC_LABEL[data.metric]} vs host [95% CI]"
    cells, gnum = [], {"gain": [], "ci_low": [], "ci_high": [], "pairs": []}
    for _, r in summary.iterrows():
        g = lookup.get(tuple(r[c] for c in data.group_cols))
        if g is None or not g.get("pairs"):
            cells.append(Cell("–", "--"))
            for k in gnum:
                gnum[k].append(np.nan if k != "pairs" else 0)
            continue
        m = data.metric
        cells.append(gain_cell(g[f"{m}:gain"], g[f"{m}:ci_low"], g[f"{m}:ci_high"], int(g[f"{m}:gain_n"])))
        gnum["gain"].append(g[f"{m}:gain"])
        gnum["ci_low"].append(g[f"{m}:ci_low"])
        gnum["ci_high"].append(g[f"{m}:ci_high"])
        gnum["pairs"].append(int(g[f"{m}:gain_n"]))
    has_host = bool((data.runs["aux"] == NO_AUX).any())
    if has_host:
        disp[col] = cells
    numeric = summary[[*data.group_cols, "runs", "seeds"]].copy()
    for m in [*class_metrics, *means]:
        for stat in ("mean", "std", "n"):
            numeric[f"{m}:{stat}"] = summary[f"{m}:{stat}"]
    for k, v in gnum.items():
        numeric[f"{data.metric}:{k if k != 'pairs' else 'gain_n'}"] = v
    proto = {"19": "19 Cityscapes classes", "16": "SYNTHIA 16-class protocol (mIoU16; mIoU13 drops "
             "wall, fence, pole)", "13": "SYNTHIA 13-class protocol"}[data.protocol]
    note = (f"Target IoU (%) at the final evaluation, {proto}; mean ± std over seeds, n = runs (seeds) per row "
            f"(at most {n_full}); '(n=k)' marks a cell computed from fewer runs than its row (a class "
            f"absent from some runs' ground truth and predictions). Δ: paired "
            f"difference to the same architecture and host without an auxiliary task over their common "
            f"seeds, with a 95% t-interval.")
    if not has_host:
        note += (" This study has no runs of a host without an auxiliary task, so it shows no gains "
                 "(the main comparison study has them).")
    return Table("main", "Main comparison", disp, numeric, note, _labels(data))


def gains_table(data: StudyData, gains: pd.DataFrame) -> Table:
    metrics = [data.metric] + (["target_miou13"] if data.protocol == "16" else [])
    if gains.empty or not (data.runs["aux"] == NO_AUX).any():  # nothing to pair with
        return Table("gains", "Paired gain over the host", pd.DataFrame(), pd.DataFrame())
    disp = _label_frame(gains, data)
    disp["pairs"] = gains["pairs"].astype(int).astype(str)
    disp["common seeds"] = gains["common_seeds"].replace("", "–")
    for m in metrics:
        if f"{m}:gain" not in gains:
            continue
        disp[f"Δ {METRIC_LABEL[m]}"] = [
            gain_cell(r[f"{m}:gain"], r[f"{m}:ci_low"], r[f"{m}:ci_high"], int(r[f"{m}:gain_n"]))
            for _, r in gains.iterrows()]
    unpaired = gains.get("seeds_only_aux", pd.Series("", gains.index)).fillna("")
    unpaired_h = gains.get("seeds_only_host", pd.Series("", gains.index)).fillna("")
    disp["unpaired seeds"] = [
        ", ".join(x for x in (f"aux: {a}" if a else "", f"host: {h}" if h else "") if x) or "–"
        for a, h in zip(unpaired, unpaired_h)]
    note = ("Paired difference (auxiliary task minus host, same architecture) over the seeds both "
            "have; mean with a 95% t-interval (t distribution, n-1 degrees of freedom). Seeds run "
            "by only one side are listed and not used.")
    return Table("gains", "Paired gain over the host", disp, gains.copy(), note,
                 [*_labels(data), "common seeds", "unpaired seeds"])


def ablation_table(data: StudyData, summary: pd.DataFrame, gains: pd.DataFrame) -> Table:
    m = data.metric
    disp = _label_frame(summary, data)
    disp["n"] = summary["runs"].astype(int).astype(str)
    disp[METRIC_LABEL[m]] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]))
                             for _, r in summary.iterrows()]
    lookup = _gain_lookup(gains, data)
    if (data.runs["aux"] == NO_AUX).any():
        disp["Δ vs host [95% CI]"] = [
            gain_cell(g[f"{m}:gain"], g[f"{m}:ci_low"], g[f"{m}:ci_high"], int(g[f"{m}:gain_n"]))
            if (g := lookup.get(tuple(r[c] for c in data.group_cols))) is not None and g.get("pairs")
            else Cell("–", "--") for _, r in summary.iterrows()]
    numeric = summary[[*data.group_cols, "runs", "seeds", f"{m}:mean", f"{m}:std", f"{m}:n"]].copy()
    axes = ", ".join(a[len("axis:"):] for a in data.axes)
    note = (f"{METRIC_LABEL[m]} (%) against the study's axes ({axes}); mean ± std over seeds. Host-only "
            f"rows have no value ('–') for axes of the auxiliary task.")
    return Table("ablation", f"Ablation over {axes}", disp, numeric, note, _labels(data))


def cost_display(data: StudyData, cost: pd.DataFrame) -> Table:
    disp = _label_frame(cost, data)
    disp["n"] = cost["runs"].astype(int).astype(str)
    spec = (("step_time", "step time (s)", 3), ("throughput", "images/s", 2),
            ("peak_mem_mb", "peak memory (MB)", 0))
    for m, label, digits in spec:
        disp[label] = [mean_std_cell(r[f"{m}:mean"], r[f"{m}:std"], int(r[f"{m}:n"]), int(r["runs"]), digits)
                       for _, r in cost.iterrows()]
        if (data.runs["aux"] == NO_AUX).any():
            disp[f"{label.split(' (')[0]} × host"] = [
                "–" if np.isnan(r[f"{m}:ratio"]) else f"{r[f'{m}:ratio']:.2f}" for _, r in cost.iterrows()]
    keep = [*data.group_cols, "runs", *(f"{m}:{s}" for m in COST_METRICS for s in ("mean", "std", "n", "ratio"))]
    note = ("Training cost per method: mean ± std over runs; '× host' is the ratio of means to the same "
            "architecture and host without an auxiliary task (timings depend on machine load).")
    return Table("cost", "Training cost relative to the host", disp, cost[keep].copy(), note,
                 _labels(data))


# --------------------------------------------------------------------------------------------------
# figures

def _label(df: pd.DataFrame, cols: Sequence[str], arch: bool = True) -> pd.Series:
    """'deeplabv2/resnet18 · dacs + mfm · mask_ratio=0.4' (axes without a value are left out)."""
    out = df["host"] + df["aux"].map(lambda a: "" if a == NO_AUX else f" + {a}")
    if arch:
        out = df["architecture"] + " · " + out
    for c in cols:
        out = out + df[c].map(lambda v, c=c: "" if v == "–" else f" · {c[len('axis:'):]}={_short(v)}")
    return out


def _save(fig, folder: Path, name: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(folder / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return [f"{name}.png", f"{name}.svg"]


def _plotting():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "udabench"  # reproducible SVG ids
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def fig_axis(data: StudyData, axis: str, folder: Path) -> tuple[str, str] | None:
    """Headline mIoU against one ablation axis: line with a seed band (numeric axis) or points with
    sd bars (categorical axis, e.g. Rebuilder preset); dashed lines = host without aux task."""
    plt, sns = _plotting()
    runs = data.runs
    on = runs[runs[axis] != "–"].copy()
    if on.empty:
        return None
    others = [a for a in data.axes if a != axis]
    on["method"] = _label(on, others)
    name = axis[len("axis:"):]
    ylabel = f"target {METRIC_LABEL[data.metric]} (%)"
    fig, ax = plt.subplots(figsize=(6, 3.6))
    num = pd.to_numeric(on[axis], errors="coerce")
    # a search (every run its own setting) or a long list of settings: points, not lines
    many = (on[axis].nunique() > 8 or on["method"].nunique() > 8
            or (bool(others) and on["method"].nunique() == len(on)))
    if num.notna().all() and many:
        on["x"] = num
        numeric_others = [a for a in others if pd.to_numeric(on[a], errors="coerce").notna().all()]
        hue = None
        if numeric_others:
            hue = numeric_others[0][len("axis:"):]
            on[hue] = pd.to_numeric(on[numeric_others[0]]).round(4)
        sns.scatterplot(data=on, x="x", y=data.metric, hue=hue, palette="viridis" if hue else None,
                        style="architecture" if on["architecture"].nunique() > 1 else None, ax=ax)
        if num.min() > 0 and num.max() / num.min() >= 20:
            ax.set_xscale("log")
        kind = "one point per run" + (f", colour = {hue}" if hue else "")
    elif num.notna().all():
        on["x"] = num
        sns.lineplot(data=on, x="x", y=data.metric, hue="method", errorbar="sd", marker="o", ax=ax)
        kind = "line = mean over seeds, band = ± 1 sd"
    else:
        if on.groupby(axis)["method"].nunique().max() == 1:  # the axis names the method (task=mic)
            on["method"] = _label(on.assign(aux=NO_AUX), others)
        order = list(_sort(on, [axis])[axis].drop_duplicates())
        ordered = all(v in KNOWN_ORDER for v in order)  # sizes: a line; names (task=mic): no line
        sns.pointplot(data=on, x=axis, y=data.metric, hue="method", errorbar="sd", order=order,
                      dodge=0.3 if on["method"].nunique() > 1 else False, ax=ax, capsize=0.1,
                      linestyle="-" if ordered else "none")
        kind = "points = mean over seeds, bars = ± 1 sd"
    base = runs[runs["aux"] == NO_AUX]
    dashed = False
    for (arch, host), b in base.groupby(["architecture", "host"]):
        if ((on["architecture"] == arch) & (on["host"] == host)).any():
            dashed = True
            ax.axhline(b[data.metric].mean(), ls="--", lw=1, color="gray")
            ax.annotate(f"{host} ({arch})", (0.01, b[data.metric].mean()), xycoords=("axes fraction", "data"),
                        fontsize=7, color="gray", va="bottom")
    ax.set_xlabel(name)
    ax.set_ylabel(ylabel)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "best", fontsize=7, title_fontsize=7)
    fname = "miou_vs_" + re.sub(r"[^A-Za-z0-9_]+", "_", name)
    _save(fig, folder, fname)
    return fname, f"{ylabel} against {name} ({kind}" + ("; dashed = host without auxiliary task)" if dashed else ")")


def fig_class_gains(data: StudyData, folder: Path) -> tuple[str, str] | None:
    """Per-class paired gain of each auxiliary task over its host (bars = mean, whiskers = sd over
    common seeds). With ablation axes, each task's best setting by mean gain is shown."""
    plt, sns = _plotting()
    runs = data.runs
    metrics = [iou_metric(CLASSES[i]) for i in data.classes]
    rows = []
    for _key, grp in runs[runs["aux"] != NO_AUX].groupby(data.group_cols, sort=False):
        base = runs[_baseline_mask(runs, grp.iloc[0])]
        if base.empty:
            continue
        a = grp.groupby("seed")[metrics + [data.metric]].mean()
        b = base.groupby("seed")[metrics + [data.metric]].mean()
        common = a.index.intersection(b.index)
        if common.empty:
            continue
        d = (a.loc[common] - b.loc[common])
        first = grp.iloc[0]
        setting = _label(grp.iloc[:1], data.axes, arch=False).iloc[0]
        rows.append((first["architecture"], first["host"], first["aux"], d[data.metric].mean(),
                     setting, d[metrics]))
    if not rows:
        return None
    best: dict[tuple, tuple] = {}
    for r in rows:
        k = r[:3]
        if k not in best or r[3] > best[k][3]:
            best[k] = r
    frames = []
    for r in best.values():
        d = r[5].rename(columns={iou_metric(CLASSES[i]): CLASSES[i] for i in data.classes})
        long = d.reset_index().melt(id_vars="seed", var_name="class", value_name="gain")
        long["architecture"] = r[0]
        long["method"] = f"{r[1]} + {r[2]}"
        frames.append(long)
    long = pd.concat(frames, ignore_index=True)
    g = sns.catplot(data=long, kind="bar", y="class", x="gain", hue="method", col="architecture",
                    order=[CLASSES[i] for i in data.classes], errorbar="sd", orient="h",
                    height=0.25 * len(data.classes) + 1.5, aspect=0.6, legend_out=True)
    for ax in g.axes.flat:
        ax.axvline(0, color="black", lw=0.8)
    g.set_axis_labels("IoU gain over host (points)", "")
    g.set_titles("{col_name}")
    fig = g.figure
    _save(fig, folder, "class_gains")
    caption = ("Per-class IoU gain over the host without auxiliary task (paired over common seeds; "
               "bar = mean, whisker = ± 1 sd)")
    if data.axes:
        caption += "; the setting with the best mean gain per task: " + "; ".join(
            f"{r[0]}: {r[4]}" for r in best.values() if " · " in r[4])
    return "class_gains", caption


def fig_curves(data: StudyData, history: pd.DataFrame, folder: Path, max_groups: int) -> list[tuple[str, str]]:
    """Training curves from the metric history: headline mIoU and each loss against iteration,
    mean over seeds with a ± 1 sd band."""
    plt, sns = _plotting()
    if history.empty:
        return []
    runs = data.runs.copy()
    runs["method"] = _label(runs, data.axes)
    ranking = runs.groupby("method")[data.metric].mean().sort_values(ascending=False)
    keep = list(ranking.index[:max_groups])
    note = f" ({max_groups} best of {len(ranking)} settings)" if len(ranking) > max_groups else ""
    hist = history.merge(runs[["run_id", "method"]], on="run_id")
    hist = hist[hist["method"].isin(keep)]
    out = []
    miou = hist[hist["key"] == data.metric].copy()
    if not miou.empty:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        sns.lineplot(data=miou, x="step", y="value", hue="method", hue_order=keep, errorbar="sd", ax=ax)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"target {METRIC_LABEL[data.metric]} (%)")
        ax.legend(fontsize=7, loc="best")
        _save(fig, folder, "curves_miou")
        out.append(("curves_miou", f"Target {METRIC_LABEL[data.metric]} during training{note} "
                                   "(mean over seeds, band = ± 1 sd)"))
    losses = hist[hist["key"].str.startswith("loss/")]
    if not losses.empty:
        g = sns.relplot(data=losses, x="step", y="value", hue="method", hue_order=keep, col="key",
                        col_wrap=min(3, losses["key"].nunique()), kind="line", errorbar="sd",
                        height=2.6, aspect=1.3, facet_kws={"sharey": False})
        g.set_axis_labels("iteration", "loss")
        g.set_titles("{col_name}")
        _save(g.figure, folder, "curves_loss")
        out.append(("curves_loss", f"Training losses (mean since the previous evaluation){note}"))
    return out


# --------------------------------------------------------------------------------------------------
# the page

def _md_table(t: Table) -> str:
    return "\n".join([t.markdown(), "", t.note, "",
                      f"Files: [Markdown](tables/{t.name}.md) · [LaTeX](tables/{t.name}.tex) · "
                      f"[CSV](tables/{t.name}.csv)"])


def page(data: StudyData, tables: list[Table], figures: list[tuple[str, str]], opts: ReportOptions,
         command: str) -> str:
    runs = data.runs
    lines = [f"# Study `{data.name}`", ""]
    desc = data.description or _study_description(data.name)
    if desc:
        lines += [desc, ""]
    if data.cut:
        lines += [data.cut, ""]
    seeds = ", ".join(sorted(set(runs["seed"]), key=lambda v: (len(v), v)))
    excluded = ", ".join(f"{v} {k}" for k, v in data.excluded.items())
    lines += [
        f"Generated by `{command}` from {len(runs)} finished runs"
        + (f" (runs not included: {excluded})" if excluded else "")
        + f"; seeds {seeds}. Headline metric: target {METRIC_LABEL[data.metric]} (%), final evaluation.",
        ""]
    if data.mixed:
        lines += ["> **Mixed runs (`--allow-mixed`)**: this page combines runs that differ in "
                  + "; ".join(f"`{t}` ({', '.join(f'{v}: {len(ids)} runs' for v, ids in g.items())})"
                              for t, g in data.mixed.items()) + ".", ""]
    if "true" in data.provenance.get("git_dirty", ""):
        lines += ["> **Uncommitted code**: some runs were made from a checkout with uncommitted changes "
                  "(`git_dirty`), so `git_commit` does not pin down their code.", ""]
    for t in tables:
        if t.display.empty:
            continue
        lines += [f"## {t.title}", "", _md_table(t), ""]
    if figures:
        lines += ["## Figures", ""]
        for name, caption in figures:
            lines += [f"![{caption}](figures/{name}.png)", "", f"*{caption}.* ([SVG](figures/{name}.svg))", ""]
    lines += ["## Provenance", ""]
    lines += [f"- `{k}`: {v}" for k, v in data.provenance.items()]
    lines += ["- Per-run numbers: [tables/trials.csv](tables/trials.csv)", ""]
    return "\n".join(lines)


def _study_description(name: str) -> str:
    """The study file's description (`studies/<name>.yaml`), when there is one."""
    import yaml

    for path in (Path("studies") / f"{name}.yaml", Path("studies") / f"{name}.yml"):
        if path.is_file():
            try:
                raw = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                return ""
            for key in ("description", "question", "answers"):
                if isinstance(raw, dict) and isinstance(raw.get(key), str):
                    return raw[key].strip()
    return ""


# --------------------------------------------------------------------------------------------------
# driver

def headline(data: StudyData, summary: pd.DataFrame, gains: pd.DataFrame) -> dict[str, Any]:
    """The numbers `reports/metrics.json` holds for one study (DVC metrics)."""
    m = data.metric
    lookup = _gain_lookup(gains, data)
    groups: dict[str, Any] = {}
    for _, r in summary.iterrows():
        key = _label(pd.DataFrame([r]), data.axes).iloc[0].replace(" · ", "/").replace(" + ", "+")
        entry = {"mean": _round(r[f"{m}:mean"]), "std": _round(r[f"{m}:std"]), "n": int(r["runs"])}
        g = lookup.get(tuple(r[c] for c in data.group_cols))
        if g is not None and g.get("pairs"):
            entry.update(gain=_round(g[f"{m}:gain"]), gain_ci_low=_round(g[f"{m}:ci_low"]),
                         gain_ci_high=_round(g[f"{m}:ci_high"]), pairs=int(g[f"{m}:gain_n"]))
        groups[key] = entry
    best = max(groups.items(), key=lambda kv: -math.inf if kv[1]["mean"] is None else kv[1]["mean"])
    return {"metric": m, "scale": data.provenance.get("scale", MISSING), "runs": len(data.runs),
            "best": best[0], "best_mean": best[1]["mean"], "groups": groups}


def _round(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def write_study(data: StudyData, opts: ReportOptions, command: str) -> tuple[Path, dict[str, Any]]:
    """Build one study's folder in a temporary folder next to it, then swap it into place."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data.name}.", dir=out))
    try:
        class_metrics = [iou_metric(CLASSES[i]) for i in data.classes]
        metrics = [*dict.fromkeys([data.metric, "target_miou", "target_miou16", "target_miou13",
                                   "pixel_acc", *class_metrics])]
        summary = summarize(data, metrics)
        gains = paired_gains(data, metrics)
        tables = [main_table(data, summary, gains), gains_table(data, gains),
                  host_table(data, host_gains(data, metrics))]
        if data.axes:
            tables.append(ablation_table(data, summary, gains))
        cost = cost_table(data)
        if cost[[f"{m}:n" for m in COST_METRICS]].to_numpy().any():
            tables.append(cost_display(data, cost))
        for t in tables:
            if not t.display.empty:
                t.write(tmp / "tables")
        data.runs.to_csv(tmp / "tables" / "trials.csv", index=False, float_format="%.10g")
        figures: list[tuple[str, str]] = []
        if opts.figures:
            for axis in data.axes:
                f = fig_axis(data, axis, tmp / "figures")
                if f:
                    figures.append(f)
            f = fig_class_gains(data, tmp / "figures")
            if f:
                figures.append(f)
            if opts.curves:
                keys = [data.metric, *(c for c in data.runs.columns if c.startswith("loss/"))]
                history = metric_history(data.runs["run_id"], keys, resolve_tracking_uri(opts.tracking_uri))
                figures += fig_curves(data, history, tmp / "figures", opts.max_curve_groups)
        (tmp / "README.md").write_text(page(data, tables, figures, opts, command))
        final = out / data.name
        old = None
        if final.exists():
            old = out / f".{data.name}.old.{os.getpid()}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, headline(data, summary, gains)


def write_metrics(out: Path, entries: dict[str, Any]) -> Path:
    """Merge the studies' headline numbers into `<out>/metrics.json` (atomic replace)."""
    path = Path(out) / "metrics.json"
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError:
            current = {}
    current.update(entries)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(current.items())), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def build_reports(studies: Sequence[str] | None, opts: ReportOptions, command: str = "udabench report"
                  ) -> list[Path]:
    """Report each study (all studies in the store when none are named); returns the pages written.
    Every study is checked before anything is written."""
    uri = resolve_tracking_uri(opts.tracking_uri)
    opts.tracking_uri = uri
    selections: dict[str, Selection] = {}
    if studies:
        for arg in studies:
            if is_study_file(arg):
                from harness.study import load_study

                name = load_study(arg, scale=opts.scale_of(Path(arg).stem) or "cpu").name
                selections[name] = Selection(name, Path(arg))
            else:
                selections[arg] = Selection(arg)
        names = list(selections)
        df = load_runs(names, uri)
        for name, sel in selections.items():
            if sel.path is not None:
                runs = df[df["study"] == name] if not df.empty else df
                scales = [opts.scale_of(name)] if opts.scale_of(name) else (
                    sorted(runs["tags.scale"].dropna().unique()) if "tags.scale" in runs else [])
                selections[name] = select(sel.path, scales or ["cpu"])
    else:
        df = load_runs(None, uri)
        names = sorted(df["study"].unique()) if not df.empty else []
    if not names:
        raise ReportError(f"no study runs in {uri} (run `udabench study run ...` first)")
    prepared = [tidy(df[df["study"] == s] if not df.empty else df, s, opts, selections.get(s)) for s in names]
    pages = []
    for data in prepared:
        folder, entry = write_study(data, opts, command)
        write_metrics(Path(opts.out), {data.name: entry})  # the page and its headline numbers together
        pages.append(folder / "README.md")
    return pages

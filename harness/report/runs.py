"""MLflow runs -> one tidy pandas frame per study.

The names every report layer shares (headline metric per protocol, metric labels, identity columns),
`ReportError` and `ReportOptions`; reading the runs of studies with one `mlflow.search_runs` call and
their metric history; which runs a study file stands for (`select`); and `tidy`, which keeps a study's
finished runs, refuses to mix runs of different data (`data_hash`), code (`git_commit`), scale or
config unless told to, and turns them into a `StudyData` (one row per run: identity, axes, seed,
metrics).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
LOAD_METRIC = "load_avg_5min"  # logged by study trials at each evaluation (harness/study/trainable.py)
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
    curves: bool = True             # training curves need the metric history (one more read)
    max_curve_groups: int = 16      # training-curve figures show at most this many groups
    jobs: int = 1                   # processes writing study folders side by side; 0: one per idle CPU

    def scale_of(self, study: str) -> str | None:
        return self.study_scales.get(study, self.scale)

    def workers(self, studies: int | None = None) -> int:
        """How many processes write the study folders: `jobs`, or with 0 the CPUs this process may use
        that other work leaves idle now (`busy_cpus`; at least 1): side by side the studies finish
        sooner on idle CPUs, while on busy ones each worker also pays for its own imports and runs
        slower. At most one per study (`studies`, when known)."""
        n = self.jobs
        if not n:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            n = cpus - busy_cpus()
        n = max(1, n)
        return min(n, studies or n)


def busy_cpus() -> int:
    """CPUs other processes keep busy now: on Linux the runnable threads besides this one (the median
    of a few readings of /proc/loadavg over 20 ms), elsewhere the 1-minute load average. (The load
    average lags by minutes: right after other work ends, or a report before, it still counts it.)"""
    import time

    try:
        readings = []
        for _ in range(5):
            with open("/proc/loadavg") as f:
                readings.append(int(f.read().split()[3].split("/")[0]) - 1)
            time.sleep(0.004)
        return max(0, sorted(readings)[2])
    except (OSError, ValueError, IndexError):
        return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0


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
    from harness.study.tracking import tracking_uri

    return tracking_uri()  # $MLFLOW_TRACKING_URI, else <project>/mlruns/mlflow.db


def _check_store(uri: str) -> None:
    """A report only reads: a missing, empty, damaged or non-MLflow store file, or one MLflow would
    migrate, is refused before MLflow opens it (harness.study.tracking.check_store)."""
    from harness.study.tracking import StoreError, check_store

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if not path.exists():
            raise ReportError(f"tracking store {uri}: no such file (run a study first, or pass "
                              f"--tracking-uri / set MLFLOW_TRACKING_URI)")
    try:
        check_store(uri, write=False)
    except StoreError as e:
        raise ReportError(str(e)) from None


def load_runs(studies: Sequence[str] | None, tracking_uri: str) -> pd.DataFrame:
    """All runs (any status) of the given studies, or of every experiment holding study runs: the frame
    of `mlflow.search_runs` (one row per active run, newest first; columns `metrics.*`, `params.*`,
    `tags.*`), read with plain queries on MLflow's SQL store (`_search_runs_sql`), through
    `mlflow.search_runs` from any other store. Columns are sorted by name within each kind."""
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
    store = _sql_store(client)
    if store is not None:
        df = _search_runs_sql(store, ids)
    else:
        saved = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri sets it for the whole process
        mlflow.set_tracking_uri(tracking_uri)
        try:
            df = mlflow.search_runs(experiment_ids=ids, output_format="pandas")
        finally:
            mlflow.set_tracking_uri(saved)  # None unsets: a later study run in this process uses its own store
    if df.empty:
        return df
    df = _sorted_columns(df)
    names = {v: k for k, v in experiments.items()}
    df["study"] = df["experiment_id"].map(names)
    if not studies:  # keep the runs of studies (tag `study`), not stray runs in other experiments
        df = df[df["tags.study"].notna()] if "tags.study" in df else df.iloc[0:0]
    return df


_KINDS = ("metrics.", "params.", "tags.")


def _sorted_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The run columns, then `metrics.*`, `params.*` and `tags.*`, each sorted by name.
    `mlflow.search_runs` orders them by iterating sets of keys, i.e. by Python's string hash, which
    changes from process to process (PYTHONHASHSEED): the loss columns of trials.csv and the facets
    of the loss curves followed it."""
    first = [c for c in df.columns if not c.startswith(_KINDS)]
    return df[first + [c for kind in _KINDS for c in sorted(c for c in df.columns if c.startswith(kind))]]


def _sql_store(client):
    """The client's store when it is MLflow's own SQL store (sqlite, PostgreSQL, MySQL), else None (a
    tracking server, a file store, a subclass with its own rules such as workspaces)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if type(store) is SqlAlchemyStore else None


def _search_runs_sql(store, experiment_ids: Sequence[str]) -> pd.DataFrame:
    """The frame `mlflow.search_runs(experiment_ids)` returns, read with four read-only queries
    through MLflow's SQL store (its session and table models): the active runs in search_runs' order
    (start time descending, then run id), then their latest metrics, params and tags as plain rows.
    search_runs loads the same rows as one ORM object each (about 125,000 for 1,000 runs) and spends
    most of its time building them; the values, dtypes and row order here are the same (a NaN metric
    is NaN, a missing one NaN, a missing param or tag None), and so is the frame's construction."""
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
    from sqlalchemy import select

    where = (SqlRun.experiment_id.in_([int(i) for i in experiment_ids]),
             SqlRun.lifecycle_stage == LifecycleStage.ACTIVE)
    with store.ManagedSessionMaker() as session:
        runs = session.execute(
            select(SqlRun.run_uuid, SqlRun.experiment_id, SqlRun.status, SqlRun.artifact_uri,
                   SqlRun.start_time, SqlRun.end_time)
            .where(*where).order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)).all()

        def values(model, *cols):
            return session.execute(select(model.run_uuid, model.key, *cols)
                                   .join(SqlRun, SqlRun.run_uuid == model.run_uuid).where(*where)).all()

        metrics = values(SqlLatestMetric, SqlLatestMetric.value, SqlLatestMetric.is_nan)
        params = values(SqlParam, SqlParam.value)
        tags = values(SqlTag, SqlTag.value)
    row = {r[0]: i for i, r in enumerate(runs)}

    def columns(prefix: str, items, null) -> dict[str, list]:
        out: dict[str, list] = {}
        for run_id, key, value in items:
            out.setdefault(prefix + key, [null] * len(runs))[row[run_id]] = value
        return {k: out[k] for k in sorted(out)}

    data: dict[str, list] = {
        "run_id": [r[0] for r in runs], "experiment_id": [str(r[1]) for r in runs],
        "status": [r[2] for r in runs], "artifact_uri": [r[3] for r in runs],
        "start_time": [pd.to_datetime(r[4], unit="ms", utc=True) for r in runs],
        "end_time": [pd.to_datetime(r[5], unit="ms", utc=True) for r in runs]}
    data.update(columns("metrics.", ((r, k, float("nan") if nan else v) for r, k, v, nan in metrics), np.nan))
    data.update(columns("params.", params, None))
    data.update(columns("tags.", tags, None))
    return pd.DataFrame(data)


def metric_history(run_ids: Sequence[str], keys: Iterable[str], tracking_uri: str) -> pd.DataFrame:
    """Metric history (run_id, key, step, value) of many runs, key by key, each run's values in
    MLflow's order (timestamp, step, value): plain read-only queries on MLflow's SQL store (500 runs
    a query), `MlflowClient.get_metric_history` per run and key elsewhere (e.g. an MLflow server)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    store = _sql_store(client)
    rows: list[tuple[str, str, int, float]] = []
    run_ids, keys = list(run_ids), list(keys)
    if store is not None:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from sqlalchemy import select

        found: dict[str, list] = {k: [] for k in keys}
        with store.ManagedSessionMaker() as session:
            for i in range(0, len(run_ids), 500):
                for rid, key, step, value, nan in session.execute(
                        select(SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.is_nan)
                        .where(SqlMetric.key.in_(keys), SqlMetric.run_uuid.in_(run_ids[i:i + 500]))
                        .order_by(SqlMetric.key, SqlMetric.run_uuid, SqlMetric.timestamp, SqlMetric.step,
                                  SqlMetric.value)):
                    found[key].append((rid, key, step, float("nan") if nan else value))
        rows = [r for k in keys for r in found[k]]
    else:
        for key in keys:
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
    (harness.study.spec.AXES: `mask_ratio` -> `method.aux.mfm.options.mask_ratio`)."""
    if f"params.{axis}" in df:
        return axis
    from harness.study.spec import AXES

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
    from harness.study.load import load_study

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
    from harness.study.trials import grid_points

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
    if f"metrics.{LOAD_METRIC}" in df:  # runs logged before it have none: no load column then
        out[LOAD_METRIC] = pd.to_numeric(df[f"metrics.{LOAD_METRIC}"], errors="coerce").astype(float)
    for c in df.columns:
        if c.startswith("metrics.loss/"):
            out[c[len("metrics."):]] = pd.to_numeric(df[c], errors="coerce")
    metric = HEADLINE[protocol]
    if out[metric].isna().all():
        raise ReportError(f"study '{study}': no finished run logged the metric '{metric}'")

    provenance = {}
    for tag in ("git_commit", "git_dirty", "data_hash", "scale", "device", "cpu", "cpu_capability", "torch",
                "python"):
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

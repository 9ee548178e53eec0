"""MLflow glue: where runs are stored, one MLflow run per study trial, and what each run holds.

Store: `MLFLOW_TRACKING_URI` when set (e.g. an `mlflow server` on 127.0.0.1), else an embedded sqlite
store under the project, `sqlite:///<root>/mlruns/mlflow.db`, with artifacts in `<root>/mlruns/artifacts/`
(absolute paths, so a trial's working directory never matters). Telemetry is off (`harness.env`).

One run per trial, in the experiment named after the study (the schema in ARCHITECTURE.md):
- params: the flattened resolved config (`model.arch`, `method.aux.mfm.options.mask_ratio`, ...);
- metrics: every evaluation's metrics (`target_miou`, `iou/<class>`, `loss/<name>`, `throughput`, ...)
  with step = iteration;
- tags: `study`, `trial_id`, `axis.<name>`, `git_commit`, `git_dirty`, `data_hash`, `config_hash`,
  `python`, `torch`, `cuda`, `device`, `scale`; also `trial_name`, `ray_experiment`, `node_id`, `node_ip`,
  `attempt`, `resumed_from_checkpoint`, `study_file_hash`, and
  `error` on a failed run;
- artifacts: `config.yaml` (the resolved config) and `per_class.csv` (the final per-class IoU).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TRACKING_DIR = "mlruns"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "artifacts"
MAX_TAG = 4000  # characters kept of a long tag value (an error message)


# --------------------------------------------------------------------------------------------------
# where

def default_tracking_uri(root: str | Path | None = None) -> str:
    """The embedded store of the project at `root` (default: the current directory)."""
    path = (Path(root or ".").resolve() / TRACKING_DIR / STORE_FILE)
    return f"sqlite:///{path}"


def tracking_uri(root: str | Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the project's embedded sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


_READY: set[str] = set()


def client(uri: str):
    """An MlflowClient for `uri`. A local sqlite store is created (folder and tables) under a file lock:
    MLflow's first-time table creation fails when two processes do it at once (e.g. two study drivers,
    or a driver and `study status`, on a fresh store)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and uri not in _READY:
        import fcntl

        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the tables
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _READY.add(uri)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, root: str | Path | None = None) -> str:
    """The id of experiment `name`, created if needed (with an absolute artifact location for a local
    store; a server chooses its own)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if is_local_store(uri):
        folder = Path(root or ".").resolve() / TRACKING_DIR / ARTIFACT_DIR / name
        location = folder.as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another study driver
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------------------------------
# what

def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'model': {'arch': 'x'}} -> {'model.arch': 'x'}; lists and None as their YAML-ish text."""
    out: dict[str, str] = {}
    for key, value in d.items():
        k = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, k))
        else:
            out[k] = "null" if value is None else str(value)
    return out


# What the pipeline writes while it runs (DVC's lock file, the stages' outputs): not code, so changes
# to them do not make a run's code "dirty" (DVC updates dvc.lock before the study stage runs).
PIPELINE_RECORDS = ("dvc.lock", "results", "reports")


def git_state(root: str | Path) -> tuple[str, str]:
    """(commit, dirty) of the checkout at `root`: ('unknown', 'unknown') outside a git repository.
    Dirty = a tracked file other than the pipeline's records (PIPELINE_RECORDS) differs from HEAD."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return "unknown", "unknown"
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip() or str(root)
        excludes = [f":(top,exclude){p}" for p in PIPELINE_RECORDS]
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                 *excludes], cwd=top, capture_output=True, text=True, timeout=30)
        return commit.stdout.strip(), str(bool(status.stdout.strip())).lower()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"


def software_tags() -> dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda or "none"}


def data_hash(cfg) -> str:
    """One content hash of the run's source, target and validation data (harness.data.dataset_hash)."""
    import hashlib

    from harness.data import dataset_hash

    parts = [dataset_hash(d) for d in (cfg.data.source, cfg.data.target, cfg.data.val)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def per_class_rows(metrics: dict[str, float]) -> list[tuple[int, str, float]]:
    from harness.labels import CLASSES

    rows = []
    for i, name in enumerate(CLASSES):
        rows.append((i, name, metrics.get("iou/" + name.replace(" ", "_"), math.nan)))
    return rows


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------------
# one run per trial

class TrialRun:
    """The MLflow run of one study trial; re-opening the same trial (a retry or a restored study)
    continues the same run."""

    def __init__(self, uri: str, run_id: str, resumed: bool) -> None:
        self.uri, self.run_id, self.resumed = uri, run_id, resumed
        self.client = client(uri)

    @classmethod
    def open(cls, uri: str, experiment_id: str, trial_id: str, ray_experiment: str, run_name: str,
             tags: dict[str, str], params: dict[str, str]) -> TrialRun:
        from mlflow.entities import Param, RunTag

        c = client(uri)
        found = c.search_runs([experiment_id], max_results=1, filter_string=(
            f"tags.trial_id = '{trial_id}' and tags.ray_experiment = '{ray_experiment}'"))
        if found:
            run_id = found[0].info.run_id
            c.update_run(run_id, status="RUNNING")
            c.log_batch(run_id, tags=[RunTag(k, str(v)[:MAX_TAG]) for k, v in tags.items()])
            return cls(uri, run_id, resumed=True)
        run = c.create_run(experiment_id, run_name=run_name,
                           tags={**{k: str(v)[:MAX_TAG] for k, v in tags.items()}, "trial_id": trial_id,
                                 "ray_experiment": ray_experiment})
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            c.log_batch(run.info.run_id, params=items[i:i + 100])
        return cls(uri, run.info.run_id, resumed=False)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _finite(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def finish(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        import csv

        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            with open(Path(tmp) / "per_class.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["train_id", "class", "iou"])
                for i, name, iou in per_class_rows(metrics):
                    w.writerow([i, name, "" if math.isnan(iou) else f"{iou:.4f}"])
            self.client.log_artifact(self.run_id, str(Path(tmp) / "config.yaml"))
            self.client.log_artifact(self.run_id, str(Path(tmp) / "per_class.csv"))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: str, status: str = "FAILED") -> None:
        mark_failed(self.uri, self.run_id, error, status)


def mark_failed(uri: str, run_id: str, error: str, status: str = "FAILED") -> None:
    c = client(uri)
    c.set_tag(run_id, "error", error[-MAX_TAG:])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "error.txt").write_text(error)
            c.log_artifact(run_id, str(Path(tmp) / "error.txt"))
    finally:
        c.set_terminated(run_id, status)


# --------------------------------------------------------------------------------------------------
# queries

def search(uri: str, experiment_id: str, filter_string: str = "") -> list:
    """Every run of an experiment matching `filter_string` (all pages)."""
    c = client(uri)
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                             page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def store_exists(uri: str) -> bool:
    """False for an embedded sqlite store that was never created (a server always exists)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def experiment_id(uri: str, name: str) -> str | None:
    exp = client(uri).get_experiment_by_name(name)
    return None if exp is None or exp.lifecycle_stage == "deleted" else exp.experiment_id


def finished_hashes(uri: str, experiment_id: str) -> set[str]:
    """Config hashes of the experiment's finished runs."""
    return set(finished_data_hashes(uri, experiment_id))


def finished_data_hashes(uri: str, experiment_id: str) -> dict[str, set[str]]:
    """Config hash -> the data hashes (tag `data_hash`, '' when absent) of the experiment's finished runs
    of that config: a trial is done only when it finished on the data it would read now."""
    done: dict[str, set[str]] = {}
    for r in search(uri, experiment_id, "attributes.status = 'FINISHED'"):
        if "config_hash" in r.data.tags:
            done.setdefault(r.data.tags["config_hash"], set()).add(r.data.tags.get("data_hash", ""))
    return done


def runs_by_trial(uri: str, experiment_id: str, ray_experiment: str) -> dict[str, Any]:
    runs = search(uri, experiment_id, f"tags.ray_experiment = '{ray_experiment}'")
    return {r.data.tags.get("trial_id"): r for r in runs}


def best_metric(uri: str, run_id: str, key: str = "target_miou", mode: str = "max") -> float:
    values = [m.value for m in client(uri).get_metric_history(run_id, key) if not math.isnan(m.value)]
    if not values:
        return math.nan
    return max(values) if mode == "max" else min(values)


def with_tracking_env(uri: str) -> dict[str, str]:
    """Environment for processes that must log to `uri` (and send no telemetry)."""
    return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}


def iter_tags(run, prefix: str) -> Iterable[tuple[str, str]]:
    for k, v in run.data.tags.items():
        if k.startswith(prefix):
            yield k[len(prefix):], v

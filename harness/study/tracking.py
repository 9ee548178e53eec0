"""MLflow glue: where runs are stored, one MLflow run per study trial, and what each run holds.

Store: `MLFLOW_TRACKING_URI` when set (e.g. an `mlflow server` on 127.0.0.1), else an embedded sqlite
store under the project, `sqlite:///<root>/mlruns/mlflow.db`, with artifacts in `<root>/mlruns/artifacts/`
(absolute paths, so a trial's working directory never matters). Telemetry is off (`harness.env`).
`check_store` looks at a local store file before MLflow opens it (which would create, migrate or trip over
it): reading commands (`report`, `study status`) never create or change a store, and `study run` refuses
a damaged, foreign or older-schema one before Ray starts; `store_errors` makes a read failure one line.

One run per trial, in the experiment named after the study (the schema in ARCHITECTURE.md):
- params: the flattened resolved config (`model.arch`, `method.aux.mfm.options.mask_ratio`, ...);
- metrics: every evaluation's metrics (`target_miou`, `iou/<class>`, `loss/<name>`, `throughput`, ...)
  with step = iteration; and, every `log_interval` iterations, the training means since the previous
  log under `train/` (`train/loss/<name>`, `train/stat/pseudo_weight`, `train/throughput`,
  `train/step_time`, `train/lr`; `TrialRun.log_train`), for the report's dense curves. The prefix keeps
  the evaluation's metrics (the means since the previous evaluation, which the tables read as each run's
  latest value) apart from the dense ones, which would otherwise share their names and steps;
- tags: `study`, `trial_id`, `axis.<name>`, `git_commit`, `git_dirty`, `data_hash`, `config_hash`,
  `python`, `torch`, `cuda`, `device`, `scale`; also `trial_name`, `ray_experiment`, `node_id`, `node_ip`,
  `attempt`, `resumed_from_checkpoint`, `study_file_hash`, `driver` (the study driver that ran the trial:
  `<pid>:<start time>@<host>`), `steps_not_relogged` (evaluations a resumed trial computed again but did
  not log, the run holding them already), `train_steps_not_relogged` (the same for the `train/` logs), and
  `error` on a failed or killed run;
- artifacts: `config.yaml` (the resolved config) and `per_class.csv` (the final per-class IoU).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import UsageError

TRACKING_DIR = "mlruns"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "artifacts"
MAX_TAG = 4000  # characters kept of a long tag value (an error message)
TRAIN = "train/"  # prefix of the dense training metrics (TrialRun.log_train)


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
    """Python, torch and CUDA versions, and the CPU with the instruction set torch's kernels use: the
    same config and seed give the same bits on the CPU only with the same kernels (with oneDNN limited
    to AVX2 on this machine's AVX-512 CPU, the smoke DAFormer+MFM run's source loss already differs in
    its 7th digit after 4 steps; README "Determinism")."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda or "none", "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


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
    continues the same run. A run takes each step once: a re-opened run knows the last step it holds
    (`last_step`) and `log_metrics` skips steps at or below it (a trial that restarts from an earlier
    point than its run holds computes those evaluations again; the run keeps the values it has). The
    dense `train/` logs keep their own last step (`last_train_step`, `log_train`): a trial killed between
    the `train/` log and the evaluation of one iteration logs that evaluation when it comes again."""

    def __init__(self, uri: str, run_id: str, resumed: bool, last_step: int = -1,
                 last_train_step: int = -1) -> None:
        self.uri, self.run_id, self.resumed, self.last_step = uri, run_id, resumed, last_step
        self.last_train_step = last_train_step
        self.client = client(uri)
        self.skipped: list[int] = []  # steps not logged again (the run held them already)
        self.train_skipped: list[int] = []  # the same for log_train

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
            evaluated, logged = last_steps(uri, found[0])
            return cls(uri, run_id, resumed=True, last_step=evaluated, last_train_step=logged)
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

    def log_metrics(self, metrics: dict[str, float], step: int) -> bool:
        """Log one evaluation at `step`; False (nothing logged) when the run holds that step already."""
        if int(step) <= self.last_step:
            self.skipped.append(int(step))
            self.set_tags({"steps_not_relogged": ",".join(map(str, self.skipped))})
            return False
        self.last_step = int(step)
        self._log(metrics, int(step))
        return True

    def log_train(self, metrics: dict[str, float], step: int) -> bool:
        """Log the training means of one `log_interval` window (the engine's `on_log`) at `step`, each
        name under `train/`, in one `log_batch` call; False when the run holds that step already."""
        if int(step) <= self.last_train_step:
            self.train_skipped.append(int(step))
            self.set_tags({"train_steps_not_relogged": steps_text(self.train_skipped)})
            return False
        self.last_train_step = int(step)
        self._log({TRAIN + k: v for k, v in metrics.items()}, int(step))
        return True

    def _log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
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


def last_steps(uri: str, run) -> tuple[int, int]:
    """The highest step of any evaluation metric and of any `train/` metric the run holds (-1 when it
    holds none)."""
    c = client(uri)
    last = {False: -1, True: -1}
    for key in run.data.metrics:
        steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
        dense = key.startswith(TRAIN)
        last[dense] = max([last[dense], *steps])
    return last[False], last[True]


def steps_text(steps: list[int]) -> str:
    """'10,20,30' for up to 20 steps; '10,20,...,900 (90 steps)' for more (a tag stays short)."""
    if len(steps) <= 20:
        return ",".join(map(str, steps))
    return f"{steps[0]},{steps[1]},...,{steps[-1]} ({len(steps)} steps)"


def close_orphaned_runs(uri: str, experiment_id: str, alive, why) -> list:
    """Mark KILLED every RUNNING run of the experiment whose study driver (tag `driver`) `alive(driver)`
    says is gone (False; None: cannot tell, e.g. another machine's or a run without the tag); its `error`
    tag is `why(run)`. Returns the runs closed."""
    closed = []
    for run in search(uri, experiment_id, "attributes.status = 'RUNNING'"):
        driver = run.data.tags.get("driver")
        if driver and alive(driver) is False:
            now = client(uri).get_run(run.info.run_id)  # not re-opened meanwhile by a resuming driver
            if now.info.status == "RUNNING" and now.data.tags.get("driver") == driver:
                mark_failed(uri, run.info.run_id, why(run), status="KILLED")
                closed.append(run)
    return closed


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
    """False for an embedded sqlite store that was never created: no file, an empty one (0 bytes) or an
    SQLite file without tables, which a query would fill with MLflow's tables (a server always exists;
    a file that is not a store counts as one: `check_store` says what is wrong with it)."""
    path = store_path(uri)
    if path is None:
        return True
    if not path.is_file() or path.stat().st_size == 0:
        return False
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:
        return True


class StoreError(UsageError):
    """A tracking store MLflow would fail on, change, or (for a reading command) create: one line naming
    the store file, what is wrong and what was expected (exit code 2 in the CLI)."""


SQLITE_MAGIC = b"SQLite format 3\x00"
MLFLOW_TABLES = ("experiments", "runs", "alembic_version")  # what makes an SQLite file an MLflow store


def store_path(uri: str) -> Path | None:
    """The file of an embedded sqlite store (`sqlite:///<path>`); None for anything else."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_store(uri: str, write: bool = False) -> None:
    """Refuse a local store before MLflow opens it, never changing it (the file is read, then opened
    read-only): a file that is not an SQLite database, a truncated or damaged one, an SQLite database
    without MLflow's tables, and a store of another MLflow schema (opening an older one migrates it).
    A reading command (`write=False`) also refuses an empty store (0 bytes, or an SQLite file without
    tables) and one without the Default experiment, since MLflow writes both on opening. A missing
    sqlite file passes (a reader says so itself, a writer creates it); a server is not checked here.
    A store that `client` is creating right now is checked once it is complete (its lock)."""
    if not uri.startswith("sqlite:"):
        if is_local_store(uri):
            _check_folder_store(uri, write)
        return
    path = store_path(uri)
    if path is not None:
        with _creation_done(path):
            _check_sqlite_store(path, uri, write)


@contextlib.contextmanager
def _creation_done(db: Path):
    """Wait while `client` creates the store's tables (it holds `<db>.lock` meanwhile, and makes the lock
    file before the store): a half-made store is not a damaged one. Never creates the lock file."""
    try:
        lock = open(db.with_name(db.name + ".lock"), "rb")
    except OSError:
        lock = None
    try:
        if lock is not None:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_SH)
        yield
    finally:
        if lock is not None:
            lock.close()  # releases the lock


def _check_sqlite_store(path: Path, uri: str, write: bool) -> None:
    if not path.exists():
        return
    where = f"tracking store {path}"
    if path.is_dir():
        raise StoreError(f"{where}: a folder, not a file (expected MLflow's sqlite store file, "
                         f"e.g. mlruns/{STORE_FILE})")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as e:
        raise StoreError(f"{where}: cannot be read: {e.strerror or e}") from None
    if size == 0:
        if write:
            return  # nothing stored yet: MLflow creates the tables, as in a new file
        raise StoreError(f"{where}: an empty file (0 bytes), not an MLflow store yet; a reading command "
                         "does not create one (`udabench study run` does)")
    if not head.startswith(SQLITE_MAGIC):
        raise StoreError(f"{where}: not an SQLite database (it begins with {head[:16]!r}; expected "
                         f"{SQLITE_MAGIC[:15].decode()!r}): not an MLflow store")
    page = int.from_bytes(head[16:18], "big") if len(head) >= 18 else 0
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big") if len(head) == 100 else 0
    wal = path.with_name(path.name + "-wal").exists()  # pages may live in the WAL: sizes do not add up
    if len(head) < 100 or not page or (not wal and (size % page or (
            head[24:28] == head[92:96] and size < pages * page))):
        said = f"; its header says {pages} pages of {page} bytes ({pages * page} bytes)" if pages else ""
        raise StoreError(f"{where}: truncated ({size} bytes{said}): a damaged store; restore it from "
                         "a backup")
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as e:
        raise StoreError(f"{where}: cannot be opened as an SQLite database: {e}") from None
    try:
        check = [r[0] for r in con.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            first = " ".join(str(check[0]).replace("*** in database main ***", "").split())
            raise StoreError(f"{where}: damaged (SQLite quick_check: {first}"
                             f"{f'; {len(check) - 1} more problem(s)' if len(check) > 1 else ''}); "
                             "restore it from a backup")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if write:
                return
            raise StoreError(f"{where}: an SQLite database with no tables, not an MLflow store yet; a "
                             "reading command does not create one (`udabench study run` does)")
        missing = [t for t in MLFLOW_TABLES if t not in tables]
        if missing == ["alembic_version"]:  # MLflow before 1.0 kept no schema version
            raise StoreError(f"{where}: an MLflow store of a pre-1.0 schema (no table alembic_version), not "
                             f"migrated here: back it up, then run `mlflow db upgrade {uri}`")
        if missing:
            shown = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
            raise StoreError(f"{where}: an SQLite database but not an MLflow store (no table "
                             f"{', '.join(missing)}; it has {shown})")
        found = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
        has_default = bool(list(con.execute("SELECT 1 FROM experiments WHERE experiment_id = 0")))
    except sqlite3.Error as e:
        msg = " ".join(str(e).split())
        if "locked" in msg or "busy" in msg:
            raise StoreError(f"{where}: locked by another process ({msg}); try again when it is done") from None
        raise StoreError(f"{where}: damaged (SQLite: {msg}); restore it from a backup") from None
    finally:
        con.close()
    _check_schema(where, uri, found, tables)
    if not has_default and not write:
        raise StoreError(f"{where}: an MLflow store without the Default experiment (id 0), which MLflow "
                         "adds on opening a store; a reading command does not write (`udabench study "
                         "run` adds it)")


def _check_schema(where: str, uri: str, found: list[str], tables: set[str]) -> None:
    """The store's alembic revision is this MLflow's head and every table MLflow expects exists;
    otherwise MLflow refuses the store, or migrates it on opening (when tables are missing)."""
    import mlflow

    try:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.base_sql_model import Base
        from mlflow.store.db.utils import _get_alembic_config  # imports every MLflow table model

        script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
        head = script.get_heads()[0]
        known = {r.revision for r in script.walk_revisions()}
        expected = set(Base.metadata.tables)
    except Exception:  # another MLflow's internals: MLflow's own check still runs when it opens the store
        return
    if len(found) != 1:
        raise StoreError(f"{where}: an MLflow store without one schema version (alembic_version holds "
                         f"{len(found)} rows; expected 1, {head})")
    rev = found[0]
    if rev != head and rev in known:
        raise StoreError(f"{where}: an MLflow store of an older schema (revision {rev}; MLflow "
                         f"{mlflow.__version__} uses {head}), not migrated here: back it up, "
                         f"then run `mlflow db upgrade {uri}`")
    if rev != head:
        raise StoreError(f"{where}: an MLflow store of schema revision {rev}, which MLflow "
                         f"{mlflow.__version__} does not know (written by a newer MLflow?); expected {head}")
    missing = sorted(expected - tables)
    if missing:
        raise StoreError(f"{where}: an incomplete MLflow store (no table {', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}), which opening it would change; restore "
                         "it from a backup")


def _check_folder_store(uri: str, write: bool) -> None:
    """A local path given as the store (`mlruns/mlflow.db` without `sqlite:///`, or `file:`): MLflow
    reads it as a file-store folder, creating it when missing."""
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                sqlite = f.read(16) == SQLITE_MAGIC
        except OSError:
            sqlite = False
        hint = f"an SQLite file: pass sqlite:///{path.resolve()}" if sqlite else "a file, not an MLflow store"
        raise StoreError(f"tracking store {uri}: {hint} (a bare path names an MLflow file-store folder)")
    if not path.exists() and not write:
        raise StoreError(f"tracking store {uri}: no such folder (expected sqlite:///<file>, an MLflow "
                         "file-store folder or a server URL); a reading command does not create one")


@contextlib.contextmanager
def store_errors(uri: str):
    """Errors of the store's database, or MLflow's refusal of it, while a command reads it -> one-line
    StoreError naming the store."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:
        import sqlite3

        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import DBAPIError

        if isinstance(e, DBAPIError) and e.orig is not None:
            msg = str(e.orig)
        elif isinstance(e, sqlite3.Error | MlflowException):
            msg = str(e.message if isinstance(e, MlflowException) else e)
        else:
            raise
        path = store_path(uri) or uri
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        raise StoreError(f"tracking store {path}: {first}") from None


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

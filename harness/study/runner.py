"""Run a study as a Ray Tune experiment: start (or join) Ray, one Tune trial per study trial, resume.

Each trial is a function trainable (`tune.with_resources`) that resolves its config, opens its MLflow
run (`harness.tracking`), calls `harness.training.train` and, after every evaluation, logs the metrics
and reports them to Tune with the checkpoint (`tune.report(..., checkpoint=...)`). A retried trial
(`FailureConfig`) or a restored study (`Tuner.restore(..., resume_errored=True)`) continues from
`tune.get_checkpoint()` and in the same MLflow run. Experiment state reaches the results folder every
2 s (`SyncConfig(sync_period=2)`, `TUNE_GLOBAL_CHECKPOINT_S=2` in `harness.env`), so a killed driver
loses seconds of work. Results: `<root>/ray_results/<study>.<scale>.<time>/` with `udabench.json`
(what was run, for `study resume`).

Ray sends nothing off this machine. A Ray we start (`ray_session` without an address):
- runs with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: every Ray process binds and talks on 127.0.0.1,
  and none asks the kernel for a route to 8.8.8.8 to find "its" address;
- starts with HOME pointing at `<root>/ray_results/.ray_home/`, which holds a
  `ray_bootstrap_config.yaml` naming a local provider (written once if absent; never the user's home):
  without one, Ray's dashboard process probes the cloud-metadata address 169.254.169.254 and looks up
  metadata.google.internal at start, usage stats off or not. Trials get the user's HOME back through
  the job's runtime_env;
- has usage stats off (`RAY_USAGE_STATS_ENABLED=0`) and, for clusters started by `ray start`, the
  "usage stats disabled" notice Ray would still post is pointed at 127.0.0.1
  (`RAY_USAGE_STATS_REPORT_URL`).
`ray_node_env(root)` is that environment for `ray start` (`udabench study ray-env` prints it), so a
cluster that `--address` joins can be started the same way. tests/test_network.py checks all this
with `strace -f -e trace=connect,sendto,sendmsg,sendmmsg`.

No orphans: `ray.shutdown()` runs in a `finally`; SIGTERM is turned into Tune's graceful SIGINT
stop. Every process of a Ray we start carries `UDABENCH_RAY_OWNER=<driver pid>:<start time>` in its
environment, so what a SIGKILLed driver left behind (Ray's dashboard and runtime-env agents) is found
by that mark and ended, by pid, the next time a study starts (`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.study import Study, Trial, load_study

RESULTS_DIR = "ray_results"
RAY_HOME = ".ray_home"
META_FILE = "udabench.json"
OWNER_ENV = "UDABENCH_RAY_OWNER"
TRAIN_FN = "harness.training:train"
ORDERS = ("file", "longest")  # the order a grid study's trials start in (`study run --order`)

# For every Ray process we start, and for `ray start` nodes (see the module docstring).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_AUTH_MODE": "disabled",
}
# Only for a single-machine Ray: nodes use 127.0.0.1 (a node joining a cluster needs a real address).
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
BOOTSTRAP_CONFIG = """\
# Written by udabench (harness/runner.py) for the Ray processes it starts, whose HOME is this folder.
# Ray's dashboard reads ~/ray_bootstrap_config.yaml; naming a provider here stops it from probing
# cloud-metadata addresses (169.254.169.254, metadata.google.internal) at start.
cluster_name: udabench-local
provider:
  type: local
  head_ip: 127.0.0.1
  worker_ips: []
"""


# --------------------------------------------------------------------------------------------------
# Ray processes

def ray_home(root: str | Path) -> Path:
    """The folder used as HOME by the Ray processes we start (holds ray_bootstrap_config.yaml)."""
    home = Path(root).resolve() / RESULTS_DIR / RAY_HOME
    cfg = home / "ray_bootstrap_config.yaml"
    if not cfg.is_file():
        home.mkdir(parents=True, exist_ok=True)
        tmp = cfg.with_name(f".{cfg.name}.{os.getpid()}.tmp")
        tmp.write_text(BOOTSTRAP_CONFIG)
        os.replace(tmp, cfg)
    return home


def ray_node_env(root: str | Path) -> dict[str, str]:
    """Environment for `ray start` on this machine (a cluster for `--address`): HOME + RAY_ENV."""
    return {"HOME": str(ray_home(root)), **RAY_ENV}


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _owner_mark() -> str:
    return f"{os.getpid()}:{_start_time(os.getpid())}"


def marked_processes(mark: str | None = None, env_key: str = OWNER_ENV) -> dict[int, str]:
    """pid -> value of every live process (of this user) whose environment carries env_key [= mark]
    (UDABENCH_RAY_OWNER by default; tests and benchmarks mark what they start with their own key)."""
    found = {}
    key = env_key.encode() + b"="
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(key):
                value = item[len(key):].decode(errors="replace")
                if (mark is None or value == mark) and not _zombie(int(d.name)):
                    found[int(d.name)] = value
                break
    return found


def _owner_alive(value: str) -> bool:
    pid, _, start = value.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == start


def _terminate(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if Path(f"/proc/{pid}").exists() and not _zombie(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def reap_orphans() -> list[int]:
    """End the Ray processes a dead udabench driver left behind (found by their owner mark)."""
    if not Path("/proc").is_dir():
        return []
    orphans = [pid for pid, owner in marked_processes().items() if not _owner_alive(owner)]
    if orphans:
        print(f"udabench: ending {len(orphans)} Ray process(es) left by an earlier, killed study driver",
              file=sys.stderr)
        _terminate(orphans)
    return orphans


@contextlib.contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(root: str | Path = ".", address: str | None = None, num_cpus: int | None = None,
                num_gpus: int | None = None) -> Iterator[bool]:
    """Ray for a study: joins `address` (an existing cluster), or starts a local Ray that talks only on
    127.0.0.1; yields whether this call started it. An already initialised Ray is used as it is.
    Ray is shut down on the way out (also on errors and Ctrl-C) and nothing of ours is left running."""
    import logging

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield False
        return
    import ray
    import ray._private.ray_constants as rc

    cluster_flag = rc.ENABLE_RAY_CLUSTER
    mark = None
    try:
        if address is None:
            reap_orphans()
            mark = _owner_mark()
            user_home = os.path.expanduser("~")
            with _environ({**RAY_ENV, **LOCAL_ENV, "HOME": str(ray_home(root)), OWNER_ENV: mark}):
                rc.ENABLE_RAY_CLUSTER = False  # read by ray at import time, and ray is imported already
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                         logging_level=logging.WARNING, runtime_env={"env_vars": {"HOME": user_home}})
        else:
            with _environ(RAY_ENV):
                ray.init(address=address, logging_level=logging.WARNING)
    except BaseException:
        rc.ENABLE_RAY_CLUSTER = cluster_flag
        raise
    session_dir = _session_dir() if address is None else None
    try:
        yield True
    finally:
        ray.shutdown()
        if session_dir is not None:  # trial working folders: everything in them reached storage_path
            shutil.rmtree(session_dir / "artifacts", ignore_errors=True)
        rc.ENABLE_RAY_CLUSTER = cluster_flag
        if mark is not None:  # agents exit shortly after the raylet; never leave one behind
            deadline = time.monotonic() + 10
            while (left := list(marked_processes(mark))) and time.monotonic() < deadline:
                time.sleep(0.2)
            if left:
                _terminate(left)


def _session_dir() -> Path | None:
    """The session folder of the Ray this process started (logs stay; trial folders are removed)."""
    try:
        import ray._private.worker as worker

        return Path(worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - a private API: without it, nothing is removed
        return None


# --------------------------------------------------------------------------------------------------
# the trainable

@dataclass
class TrialSpec:
    """What every trial of one study run needs (sent to the trials by `tune.with_parameters`)."""

    study: Study
    root: str
    tracking_uri: str
    experiment_id: str
    ray_experiment: str
    git_commit: str
    git_dirty: str
    train_fn: str = TRAIN_FN
    threads: int = 1


def _import(path: str):
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


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


def trainable(config: dict[str, Any], spec: TrialSpec) -> None:
    """One study trial (runs in a Ray worker)."""
    import shutil

    from ray import tune

    from harness import tracking
    from harness.training import pick_device

    study = spec.study
    point = dict(config["point"])
    cfg = study.resolve(point)
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    workdir = Path.cwd().resolve()
    train_cfg = absolutize(cfg, spec.root, workdir / "run", spec.threads)

    tags = {
        "study": study.name, "scale": study.scale, "config_hash": cfg.hash(),
        "trial_name": _name(point), "git_commit": spec.git_commit, "git_dirty": spec.git_dirty,
        "device": str(pick_device(cfg.device)), **_node_tags(),
        "study_file_hash": study.text_hash, **tracking.software_tags(),
        **{f"axis.{k}": str(v) for k, v in point.items()},  # exact (a sampled float in full)
    }
    data_hash = None
    with contextlib.suppress(Exception):  # data may be created by the run itself: tagged after it
        data_hash = tracking.data_hash(train_cfg)
        tags["data_hash"] = data_hash
    run = tracking.TrialRun.open(spec.tracking_uri, spec.experiment_id, trial_id, spec.ray_experiment,
                                 run_name=_name(point), tags=tags, params=tracking.flatten(cfg.to_dict()))
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume = workdir / "restored"
        shutil.rmtree(resume, ignore_errors=True)
        checkpoint.to_directory(str(resume))
    attempt = 1
    if run.resumed:
        prev = run.client.get_run(run.run_id).data.tags
        attempt = int(prev.get("attempt", "1")) + 1
        if "error" in prev:
            run.client.delete_tag(run.run_id, "error")
    run.set_tags({"attempt": str(attempt), "resumed_from_checkpoint": str(resume is not None).lower()})

    def on_eval(iteration: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        run.log_metrics(metrics, step=iteration)
        src = Path(checkpoint_dir) / "checkpoint.pt"
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            try:
                os.link(src, Path(tmp) / src.name)
            except OSError:
                shutil.copy2(src, Path(tmp) / src.name)
            tune.report({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                        checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        final = _import(spec.train_fn)(train_cfg, on_eval=on_eval, resume=str(resume) if resume else None)
        if data_hash is None:
            try:
                run.set_tags({"data_hash": tracking.data_hash(train_cfg)})
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                run.set_tags({"data_hash": f"unavailable: {type(e).__name__}: {e}"})
        run.finish(cfg.to_dict(), final)
    except BaseException:
        run.fail(traceback.format_exc())
        raise
    finally:
        # Every checkpoint went to Tune's storage with tune.report and the metrics to MLflow: the
        # working copies (one checkpoint per trial, in Ray's temp folder) would only fill the disk.
        for scratch in (workdir / "run", workdir / "restored"):
            shutil.rmtree(scratch, ignore_errors=True)


def _node_tags() -> dict[str, str]:
    """The Ray node this trial runs on: its id and address (as the cluster knows them)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id),
              ray.util.get_node_ip_address())
    return {"node_id": node_id, "node_ip": ip}


def _name(point: dict[str, Any]) -> str:
    from harness.study import _point_name

    return _point_name(point)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------------------------------
# the driver

@dataclass
class Outcome:
    """What a `study run` / `study resume` did."""

    study: str
    ray_experiment: str | None = None
    path: Path | None = None
    planned: int = 0
    skipped: int = 0
    finished: int = 0
    errored: int = 0
    interrupted: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.errored else 0)


def _tuner(study: Study, spec: TrialSpec, trials: list[Trial] | None, results: Path, name: str,
           restore: bool = False, num_samples: int | None = None):
    from ray import tune

    resources = study.resources()
    fn = tune.with_resources(tune.with_parameters(trainable, spec=spec), resources)
    if restore:
        return tune.Tuner.restore(str(results / name), trainable=fn, resume_errored=True)
    search = study.spec.search
    searcher = None
    if search is not None:
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=search.seed)
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        metric=search.metric if search else "target_miou",
        mode=search.mode if search else "max",
        num_samples=(num_samples or search.num_samples) if search else 1,
        max_concurrent_trials=study.spec.max_concurrent,
        trial_dirname_creator=_trial_dirname,
        reuse_actors=True,  # a finished trial's process runs the next one: no second import of torch/timm
    )
    from ray.tune.logger import JsonLoggerCallback

    run_config = tune.RunConfig(
        name=name, storage_path=str(results),
        callbacks=[JsonLoggerCallback()],  # result.json per trial (the auto loggers are off in harness.env)
        failure_config=tune.FailureConfig(max_failures=study.spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        sync_config=tune.SyncConfig(sync_period=2),
        verbose=1,
    )
    return tune.Tuner(fn, param_space=study.param_space(trials), tune_config=tune_config,
                      run_config=run_config)


def _check_resources(study: Study) -> None:
    import ray

    from harness.cli import UsageError

    have = ray.cluster_resources()
    need = study.resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        if need[key] > have.get(ray_key, 0):
            raise UsageError(
                f"a trial of study '{study.name}' at scale '{study.scale}' asks for {need[key]:g} {key.upper()}, "
                f"the Ray cluster has {have.get(ray_key, 0):g}; set resources in the study file or use "
                f"--{key}s-per-trial")


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM -> Tune's graceful stop (the SIGINT path): state saved, trials stopped, Ray shut down."""
    try:
        old = signal.signal(signal.SIGTERM, lambda s, f: signal.raise_signal(signal.SIGINT))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _fit(tuner, study: Study, spec: TrialSpec, outcome: Outcome) -> Outcome:
    """Run the tuner; then count from MLflow (the record of truth) what finished, failed or was cut
    short, and close the runs of trials that cannot report any more (also after a second Ctrl-C)."""

    results = None
    try:
        # we snapshot every 2 s on purpose (TUNE_GLOBAL_CHECKPOINT_S): Tune's "too frequent" warning is noise
        with _sigterm_as_sigint(), _environ({"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}):
            results = tuner.fit()
    finally:
        _close_runs(results, spec, outcome)
    return outcome


def _close_runs(results, spec: TrialSpec, outcome: Outcome) -> None:
    from harness import tracking

    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    runs = tracking.runs_by_trial(spec.tracking_uri, spec.experiment_id, spec.ray_experiment)
    for t in trials:
        run = runs.get(t.trial_id)
        if t.status == "ERROR" and run is not None and run.info.status != "FINISHED":
            err = _trial_error(t) or "the trial's process died"
            outcome.errors[_name(t.config.get("point", {}))] = err.strip().splitlines()[-1]
            if run.info.status != "FAILED":
                tracking.mark_failed(spec.tracking_uri, run.info.run_id, err)
    runs = tracking.runs_by_trial(spec.tracking_uri, spec.experiment_id, spec.ray_experiment)
    for run in runs.values():
        if run.info.status == "RUNNING":  # the driver stopped before the trial ended
            tracking.mark_failed(spec.tracking_uri, run.info.run_id,
                                 "interrupted: the study driver stopped; `udabench study resume` continues "
                                 "from the last checkpoint", status="KILLED")
    states = [r.info.status for r in tracking.runs_by_trial(spec.tracking_uri, spec.experiment_id,
                                                             spec.ray_experiment).values()]
    outcome.finished = states.count("FINISHED")
    outcome.errored = states.count("FAILED")
    outcome.interrupted = results is None or outcome.finished + outcome.errored < outcome.planned


def _trial_error(trial) -> str:
    with contextlib.suppress(Exception):
        path = getattr(trial, "error_file", None) or ""
        if path and Path(path).is_file():
            return Path(path).read_text()
    with contextlib.suppress(Exception):
        return str(trial.get_pickled_error() or trial.get_error() or "")
    return ""


def _spec(study: Study, root: Path, uri: str, experiment_id: str, name: str, train_fn: str) -> TrialSpec:
    from harness import tracking

    commit, dirty = tracking.git_state(root)
    return TrialSpec(study=study, root=str(root), tracking_uri=uri, experiment_id=experiment_id,
                     ray_experiment=name, git_commit=commit, git_dirty=dirty, train_fn=train_fn,
                     threads=max(1, int(study.resources()["cpu"])))


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path / META_FILE)


def check_data(configs: list[RunConfig], root: str | Path) -> None:
    """Every dataset the trials read, checked before Ray starts or the tracking store is touched: its
    listing (each image paired with its label) and every PNG in it complete (ends with IEND). Bad data
    is a usage error naming the file, not a study of failed trials."""
    from harness.cli import UsageError
    from harness.data.dataset import build_dataset
    from harness.data.io import DataError, _png_truncated
    from harness.registry import UnknownNameError

    seen: set[str] = set()
    for cfg in configs:
        data = absolutize(cfg, root, Path(root), 1).data
        for split in ("source", "target", "val"):
            ds = getattr(data, split)
            if (key := ds.model_dump_json()) in seen:
                continue
            seen.add(key)
            try:
                for s in build_dataset(ds).samples:
                    for path in (s.image, s.label):
                        if path.suffix.lower() == ".png" and _png_truncated(path):
                            raise DataError(f"{path}: truncated PNG (the file does not end with an IEND chunk)")
            except (DataError, UnknownNameError) as e:
                raise UsageError(f"{cfg.name}: data.{split}: {e}") from None


def data_hashes(configs: list[RunConfig], root: str | Path) -> list[str | None]:
    """The data hash (`tracking.data_hash`) of each config's data as it is now under `root`, computed
    once per distinct data config; None where it cannot be computed (missing data: check_data says why)."""
    from harness import tracking

    cache: dict[str, str | None] = {}
    for cfg in configs:
        if (key := cfg.data.model_dump_json()) not in cache:
            try:
                cache[key] = tracking.data_hash(absolutize(cfg, root, Path(root), 1))
            except Exception:  # noqa: BLE001 - then no finished run counts as made on this data
                cache[key] = None
    return [cache[cfg.data.model_dump_json()] for cfg in configs]


def run_study(study: Study, root: str | Path = ".", address: str | None = None, force: bool = False,
              cover: bool = False, num_cpus: int | None = None, num_gpus: int | None = None,
              train_fn: str = TRAIN_FN, order: str = "file") -> Outcome:
    """Run the study's trials that have not finished yet (all with `force`) as one Tune experiment,
    started in file order or, with `order="longest"`, the costliest first (measured here:
    `harness.estimate.longest_first`)."""
    from harness import tracking

    root = Path(root).resolve()
    uri = tracking.tracking_uri(root)
    outcome = Outcome(study=study.name)
    trials: list[Trial] | None = None
    if not study.is_search:
        trials = study.trials(cover=cover)
        outcome.planned = len(trials)
        if not force:
            known = tracking.experiment_id(uri, study.name) if tracking.store_exists(uri) else None
            done = tracking.finished_data_hashes(uri, known) if known else {}
            now = data_hashes([t.config for t in trials], root) if done else [None] * len(trials)
            todo, other = [], []  # other: (old data hashes, data hash now) of trials finished on other data
            for t, h in zip(trials, now):
                if h is None or h not in done.get(t.hash, ()):
                    todo.append(t)
                    if h is not None and t.hash in done:
                        other.append((done[t.hash], h))
            if other:
                was = sorted({d[:16] or "none" for old, _ in other for d in old})
                print(f"udabench: {len(other)} finished trial(s) of '{study.name}' were made on other data "
                      f"(data hash {', '.join(was)} != {', '.join(sorted({h for _, h in other}))}); "
                      "running them again")
            outcome.skipped = len(trials) - len(todo)
            if outcome.skipped:
                print(f"udabench: {outcome.skipped} of {len(trials)} trial(s) of '{study.name}' already "
                      f"finished in {uri}; skipped (--force runs them again)")
            trials = todo
        outcome.planned = len(trials)  # this Tune experiment's trials
        if not trials:
            print(f"udabench: nothing to run for '{study.name}' at scale '{study.scale}'")
            return outcome
    else:
        outcome.planned = study.spec.search.num_samples if not cover else min(2, study.spec.search.num_samples)

    if order not in ORDERS:
        raise ValueError(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
    check_data([t.config for t in trials] if trials is not None else [study.resolve({})], root)
    if order == "longest" and trials is not None and len(trials) > 1:
        from harness.estimate import longest_first

        threads = max(1, int(study.resources()["cpu"] or 1))
        trials = longest_first(trials, root, threads, progress=lambda m: print(m, flush=True))
        print("udabench: start order: " + ", ".join(_name(t.point) for t in trials), flush=True)
    results = root / RESULTS_DIR
    name = f"{study.name}.{study.scale}.{time.strftime('%Y%m%d-%H%M%S')}"
    while (results / name).exists():
        name += "x"
    with ray_session(root, address, num_cpus, num_gpus):
        _check_resources(study)  # before anything is written
        exp_id = tracking.ensure_experiment(uri, study.name, root)
        outcome.ray_experiment, outcome.path = name, results / name
        _write_meta(results / name, {
            "study_file": str(study.path.resolve()), "study": study.name, "study_file_hash": study.text_hash,
            "scale": study.scale, "overrides": study.overrides, "cover": cover, "force": force,
            "tracking_uri": uri, "experiment_id": exp_id, "train_fn": train_fn,
            "trials": [t.name for t in trials] if trials is not None else None, "planned": outcome.planned,
            "resources": study.resources(),
        })
        spec = _spec(study, root, uri, exp_id, name, train_fn)
        tuner = _tuner(study, spec, trials, results, name, num_samples=outcome.planned)
        return _fit(tuner, study, spec, outcome)


def latest_experiment(root: str | Path, study_name: str, scale: str | None = None) -> Path | None:
    results = Path(root).resolve() / RESULTS_DIR
    if not results.is_dir():
        return None
    pattern = f"{study_name}.{scale}.*" if scale else f"{study_name}.*.*"
    found = [p for p in results.glob(pattern) if (p / META_FILE).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resume_study(study_file: str | Path, root: str | Path = ".", scale: str | None = None,
                 address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 experiment: str | Path | None = None) -> Outcome:
    """Restore the latest (or the given) Tune experiment of a study and finish it: finished trials are
    kept, errored and interrupted ones continue from their last checkpoint."""
    from ray import tune

    from harness.cli import UsageError
    from harness.study import Resources, StudyError

    root = Path(root).resolve()
    probe = load_study(study_file, scale or "cpu")
    path = Path(experiment) if experiment else latest_experiment(root, probe.name, scale)
    if path is None or not (path / META_FILE).is_file():
        raise UsageError(f"no run of study '{probe.name}'{f' at scale {scale}' if scale else ''} under "
                         f"{root / RESULTS_DIR} to resume; start one with `udabench study run {study_file}`")
    meta = json.loads((path / META_FILE).read_text())
    study = load_study(study_file, meta["scale"], meta["overrides"])
    if study.text_hash != meta["study_file_hash"]:
        raise StudyError(f"{study_file}: changed since {path.name} started (its trials may no longer "
                         f"match); run `udabench study run {study_file} --scale {meta['scale']}` instead: "
                         "finished trials are skipped")
    outcome = Outcome(study=study.name, ray_experiment=path.name, path=path)
    if not tune.Tuner.can_restore(str(path)):
        print(f"udabench: {path.name} saved no experiment state yet; running the study again "
              "(finished trials are skipped)")
        return run_study(study, root, address, force=False, cover=meta.get("cover", False),
                         num_cpus=num_cpus, num_gpus=num_gpus, train_fn=meta.get("train_fn", TRAIN_FN))
    spec = _spec(study, root, meta["tracking_uri"], meta["experiment_id"], path.name,
                 meta.get("train_fn", TRAIN_FN))
    outcome.planned = meta["planned"]
    study.spec.resources = Resources(**meta["resources"])
    with ray_session(root, address, num_cpus, num_gpus):
        _check_resources(study)
        tuner = _tuner(study, spec, None, path.parent, path.name, restore=True)
        return _fit(tuner, study, spec, outcome)

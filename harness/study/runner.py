"""Run a study as a Ray Tune experiment: start (or join) Ray, one Tune trial per study trial, resume.

Each trial is a function trainable (`tune.with_resources`) that resolves its config, opens its MLflow
run (`harness.study.tracking`), calls `harness.engine.training.train` and, after every evaluation, logs the metrics
and reports them to Tune with the checkpoint (`tune.report(..., checkpoint=...)`). A retried trial
(`FailureConfig`) or a restored study (`Tuner.restore(..., resume_errored=True)`) continues from
`tune.get_checkpoint()` (or a newer checkpoint of its own, `trainable.resume_point`) and in the same
MLflow run, never logging a step twice. Experiment state reaches the results folder every 2 s
(`SyncConfig(sync_period=2)`, `TUNE_GLOBAL_CHECKPOINT_S=2` in `harness.env`) and after every
checkpoint, so a killed driver loses seconds of work. Every run carries its driver (tag `driver`): runs
of the study that a dead driver left RUNNING are closed (KILLED, tag `error` says why) when `study run`
or `study resume` starts and ends, whichever the user runs after a crash. Results:
`<root>/ray_results/<study>.<scale>.<time>/` with `udabench.json` (what was run, for `study resume`).

The Ray session a study runs in (loopback only, no orphans, trials at the driver's priority unless
`nice`) is `harness.study.session`; what runs in each trial's worker is `harness.study.trainable`; what
the study prints while it runs (a live table, or event lines; Ray's and the trials' output in files of
the experiment folder) is `harness.study.console`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.study import console as live
from harness.study.load import load_study
from harness.study.session import TRIAL_NICENESS, patched_environ, ray_session
from harness.study.trainable import TRAIN_FN, TrialSpec, import_train_fn, trial_dirname
from harness.study.trials import Study, Trial, absolutize, point_name

RESULTS_DIR = "ray_results"
META_FILE = "udabench.json"
LABEL_CHECK_PIXELS = 100_000_000  # label pixels read per dataset before Ray starts (about 2 s here)
ORDERS = ("file", "longest")  # the order a grid study's trials start in (`study run --order`)


def _trial_dirname(trial) -> str:
    return trial_dirname(trial.trial_id)


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
           restore: bool = False, num_samples: int | None = None, console: live.Console | None = None,
           verbose: bool = True):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    resources = study.resources()
    # live.trainable: the trial's output to trial_<id>/output.log, then harness.study.trainable.trainable
    fn = tune.with_resources(tune.with_parameters(live.trainable, spec=spec), resources)
    callbacks = [JsonLoggerCallback()]  # result.json per trial (the auto loggers are off in harness.env)
    if console is not None:
        callbacks.append(live.callback(console))
    if restore:
        tuner = tune.Tuner.restore(str(results / name), trainable=fn, resume_errored=True)
        # the run config comes back from the experiment: this run's console and verbosity instead
        run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
        if run_config is not None:
            run_config.callbacks, run_config.verbose = callbacks, 1 if verbose else 0
        return tuner
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
    run_config = tune.RunConfig(
        name=name, storage_path=str(results), callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=study.spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        sync_config=tune.SyncConfig(sync_period=2),
        verbose=1 if verbose else 0,  # 1: Ray's `== Status ==` block every few seconds (--verbose)
    )
    return tune.Tuner(fn, param_space=study.param_space(trials), tune_config=tune_config,
                      run_config=run_config)


def _check_resources(study: Study) -> None:
    import ray

    from harness.errors import UsageError

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


def _console(study: Study, path: Path, planned: int, verbose: bool, niceness: int | None) -> live.Console:
    """The study's console (harness.study.console), its first lines printed: where the output goes."""
    import ray

    from harness.study.session import session_logs

    need, have = study.resources(), ray.cluster_resources()
    slots = min(int(have.get("CPU", 1) // need["cpu"]) if need["cpu"] else planned,
                int(have.get("GPU", 0) // need["gpu"]) if need["gpu"] else planned,
                study.spec.max_concurrent or planned, max(planned, 1))

    def describe(point: dict[str, Any]) -> tuple[int, int]:
        cfg = study.resolve(point)
        return cfg.schedule.iterations, 2 * cfg.data.batch_size  # a step reads a source and a target batch

    link = path / live.SESSION_LINK
    if (logs := session_logs()) is not None:
        with contextlib.suppress(OSError):
            if link.is_symlink():
                link.unlink()
            link.symlink_to(logs, target_is_directory=True)
    unsampled = planned if study.is_search else 0
    console = live.Console(study.name, path, max(1, slots), unsampled=unsampled, verbose=verbose,
                           describe=describe)
    nice = f"; trials at niceness +{niceness} (--nice)" if niceness is not None else ""
    console.header(f"udabench: study '{study.name}' at scale '{study.scale}': {planned} trial(s), up to "
                   f"{max(1, slots)} at a time{nice}; Tune experiment {path}")
    if not verbose:
        console.header(f"udabench: Ray's and the trials' output: {path / live.RAY_LOG}, "
                       f"{path / 'trial_*' / live.OUTPUT_FILE}, {link}/ (--verbose shows it here)")
    return console


def _fit(tuner_for, study: Study, spec: TrialSpec, outcome: Outcome, verbose: bool = False,
         niceness: int | None = None) -> Outcome:
    """Run the tuner (`tuner_for(console)`) under the study's console; then count from MLflow (the
    record of truth) what finished, failed or was cut short, and close the runs of trials that cannot
    report any more (also after a second Ctrl-C)."""

    results = None
    path = Path(spec.experiment_path)
    console = _console(study, path, outcome.planned, verbose, niceness)
    try:
        tuner = tuner_for(console)
        # we snapshot every 2 s on purpose (TUNE_GLOBAL_CHECKPOINT_S): Tune's "too frequent" warning is noise
        with _sigterm_as_sigint(), live.ray_output_to_file(path, verbose), \
                patched_environ({"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}):
            results = tuner.fit()
    finally:
        console.close()
        _close_runs(results, spec, outcome)
    return outcome


def _close_runs(results, spec: TrialSpec, outcome: Outcome) -> None:
    from harness.study import tracking

    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    runs = tracking.runs_by_trial(spec.tracking_uri, spec.experiment_id, spec.ray_experiment)
    for t in trials:
        run = runs.get(t.trial_id)
        if t.status == "ERROR" and run is not None and run.info.status != "FINISHED":
            err = _trial_error(t) or "the trial's process died"
            outcome.errors[point_name(t.config.get("point", {}))] = err.strip().splitlines()[-1]
            if run.info.status != "FAILED":
                tracking.mark_failed(spec.tracking_uri, run.info.run_id, err)
    runs = tracking.runs_by_trial(spec.tracking_uri, spec.experiment_id, spec.ray_experiment)
    for run in runs.values():
        if run.info.status == "RUNNING":  # the driver stopped before the trial ended
            tracking.mark_failed(spec.tracking_uri, run.info.run_id,
                                 "interrupted: the study driver stopped; `udabench study resume` continues "
                                 "from the last checkpoint", status="KILLED")
    close_orphaned_runs(spec.tracking_uri, spec.experiment_id, spec.study.name)
    states = [r.info.status for r in tracking.runs_by_trial(spec.tracking_uri, spec.experiment_id,
                                                             spec.ray_experiment).values()]
    outcome.finished = states.count("FINISHED")
    outcome.errored = states.count("FAILED")
    outcome.interrupted = results is None or outcome.finished + outcome.errored < outcome.planned


def close_orphaned_runs(uri: str, experiment_id: str, study_name: str) -> int:
    """Close (KILLED) the study's runs left RUNNING by a study driver that is gone (SIGKILL, crash):
    nobody else would, and a run of a dead driver never ends. Runs of live drivers, of drivers on other
    machines and runs without the `driver` tag are left alone. Returns how many were closed."""
    from harness.study import tracking
    from harness.study.session import driver_alive, driver_mark

    me = driver_mark()

    def why(run) -> str:
        return (f"killed: its study driver ({run.data.tags.get('driver')}) ended without closing this run "
                f"(SIGKILL or crash); closed by study driver {me}. `udabench study resume` continues Tune "
                f"experiment {run.data.tags.get('ray_experiment', '?')} from the trial's last checkpoint; "
                "`udabench study run` runs the unfinished trials again")

    closed = tracking.close_orphaned_runs(uri, experiment_id, driver_alive, why)
    if closed:
        print(f"udabench: {len(closed)} run(s) of '{study_name}' left RUNNING by a study driver that is gone; "
              f"marked KILLED: {', '.join(r.info.run_name or r.info.run_id for r in closed)}", flush=True)
    return len(closed)


def _trial_error(trial) -> str:
    with contextlib.suppress(Exception):
        path = getattr(trial, "error_file", None) or ""
        if path and Path(path).is_file():
            return Path(path).read_text()
    with contextlib.suppress(Exception):
        return str(trial.get_pickled_error() or trial.get_error() or "")
    return ""


def _spec(study: Study, root: Path, uri: str, experiment_id: str, path: Path, train_fn: str) -> TrialSpec:
    from harness.study import tracking
    from harness.study.session import driver_mark

    commit, dirty = tracking.git_state(root)
    return TrialSpec(study=study, root=str(root), tracking_uri=uri, experiment_id=experiment_id,
                     ray_experiment=path.name, git_commit=commit, git_dirty=dirty, train_fn=train_fn,
                     threads=max(1, int(study.resources()["cpu"])), experiment_path=str(path.resolve()),
                     driver=driver_mark())


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path / META_FILE)


def check_data(configs: list[RunConfig], root: str | Path) -> None:
    """Every dataset the trials read, checked before Ray starts or the tracking store is touched: its
    listing (each image paired with its label), every PNG in it complete (ends with IEND), labels of
    their image's size holding only trainIds (all labels of a small set, the first LABEL_CHECK_PIXELS of
    a large one), and the training crop within the images. Bad data is a usage error naming the file,
    not a study of failed trials."""
    from harness.data.dataset import build_dataset
    from harness.data.io import DataError, _png_truncated
    from harness.errors import UsageError
    from harness.models.weights import WeightsFileError, check_present
    from harness.registry import UnknownNameError

    seen: set[str] = set()
    for cfg in configs:
        if cfg.model.pretrained:  # before data: a missing encoder file says where to obtain it
            try:
                check_present(absolutize(cfg, root, Path(root), 1).model.pretrained)
            except WeightsFileError as e:
                raise UsageError(f"{cfg.name}: model.pretrained: {e}") from None
        data = absolutize(cfg, root, Path(root), 1).data
        for split in ("source", "target", "val"):
            ds = getattr(data, split)
            margins = cfg.method.pseudo_image_margins if split == "target" else None
            if (key := ds.model_dump_json() + (str(data.crop) if split != "val" else "") + str(margins)) in seen:
                continue
            seen.add(key)
            try:
                dataset = build_dataset(ds, crop=data.crop if split != "val" else None, pseudo_margins=margins)
                if len(dataset) == 0:
                    raise DataError(f"{ds.name} {ds.domain or ''}/{ds.split} at {ds.root} holds no images")
                for s in dataset.samples:
                    for path in (s.image, s.label):
                        if path.suffix.lower() == ".png" and _png_truncated(path):
                            raise DataError(f"{path}: truncated PNG (the file does not end with an IEND chunk)")
                dataset.check_crop(f"data.{split}")
                dataset.check_labels(LABEL_CHECK_PIXELS)
            except (DataError, UnknownNameError) as e:
                where = "" if str(e).startswith(f"data.{split}") else f"data.{split}: "  # check_crop names it
                raise UsageError(f"{cfg.name}: {where}{e}") from None


def data_hashes(configs: list[RunConfig], root: str | Path) -> list[str | None]:
    """The data hash (`tracking.data_hash`) of each config's data as it is now under `root`, computed
    once per distinct data config; None where it cannot be computed (missing data: check_data says why)."""
    from harness.study import tracking

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
              train_fn: str = TRAIN_FN, order: str = "file", verbose: bool = False,
              nice: int = TRIAL_NICENESS) -> Outcome:
    """Run the study's trials that have not finished yet (all with `force`) as one Tune experiment,
    started in file order or, with `order="longest"`, the costliest first (measured here:
    `harness.study.estimate.longest_first`). `verbose`: Ray's and the trials' output on the console
    too (`harness.study.console`); `nice`: the trials' niceness above the driver's (a Ray we start)."""
    from harness.study import tracking

    root = Path(root).resolve()
    uri = tracking.tracking_uri(root)
    outcome = Outcome(study=study.name)
    trials: list[Trial] | None = None
    known: str | None = None  # the study's MLflow experiment, if it exists already
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
            if known:
                close_orphaned_runs(uri, known, study.name)
            return outcome
    else:
        outcome.planned = study.spec.search.num_samples if not cover else min(2, study.spec.search.num_samples)

    if order not in ORDERS:
        raise ValueError(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
    check_data([t.config for t in trials] if trials is not None else [study.resolve({})], root)
    if order == "longest" and trials is not None and len(trials) > 1:
        from harness.study.estimate import longest_first

        threads = max(1, int(study.resources()["cpu"] or 1))
        trials = longest_first(trials, root, threads, progress=lambda m: print(m, flush=True))
        print("udabench: start order: " + ", ".join(point_name(t.point) for t in trials), flush=True)
    results = root / RESULTS_DIR
    name = f"{study.name}.{study.scale}.{time.strftime('%Y%m%d-%H%M%S')}"
    while (results / name).exists():
        name += "x"
    with ray_session(root, address, num_cpus, num_gpus, worker_niceness=nice, log_to_driver=verbose) as started:
        _check_resources(study)  # before anything is written
        exp_id = tracking.ensure_experiment(uri, study.name, root)
        close_orphaned_runs(uri, exp_id, study.name)
        outcome.ray_experiment, outcome.path = name, results / name
        _write_meta(results / name, {
            "study_file": str(study.path.resolve()), "study": study.name, "study_file_hash": study.text_hash,
            "scale": study.scale, "overrides": study.overrides, "cover": cover, "force": force,
            "tracking_uri": uri, "experiment_id": exp_id, "train_fn": train_fn,
            "trials": [t.name for t in trials] if trials is not None else None, "planned": outcome.planned,
            "resources": study.resources(),
        })
        spec = _spec(study, root, uri, exp_id, results / name, train_fn)
        return _fit(lambda console: _tuner(study, spec, trials, results, name, num_samples=outcome.planned,
                                           console=console, verbose=verbose),
                    study, spec, outcome, verbose, nice if started else None)


def latest_experiment(root: str | Path, study_name: str, scale: str | None = None) -> Path | None:
    results = Path(root).resolve() / RESULTS_DIR
    if not results.is_dir():
        return None
    pattern = f"{study_name}.{scale}.*" if scale else f"{study_name}.*.*"
    found = [p for p in results.glob(pattern) if (p / META_FILE).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resume_study(study_file: str | Path, root: str | Path = ".", scale: str | None = None,
                 address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 experiment: str | Path | None = None, verbose: bool = False,
                 nice: int = TRIAL_NICENESS) -> Outcome:
    """Restore the latest (or the given) Tune experiment of a study and finish it: finished trials are
    kept, errored and interrupted ones continue from their last checkpoint."""
    from ray import tune

    from harness.errors import UsageError
    from harness.study.spec import Resources, StudyError

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
    train_fn = meta.get("train_fn", TRAIN_FN)
    try:
        import_train_fn(train_fn)
    except (ImportError, AttributeError):
        raise UsageError(f"{path / META_FILE}: its trials call '{train_fn}', which this version of "
                         f"udabench does not have (modules moved: ARCHITECTURE.md); run `udabench study run "
                         f"{study_file} --scale {meta['scale']}` instead: finished trials are skipped") from None
    outcome = Outcome(study=study.name, ray_experiment=path.name, path=path)
    if not tune.Tuner.can_restore(str(path)):
        print(f"udabench: {path.name} saved no experiment state yet; running the study again "
              "(finished trials are skipped)")
        return run_study(study, root, address, force=False, cover=meta.get("cover", False),
                         num_cpus=num_cpus, num_gpus=num_gpus, train_fn=train_fn, verbose=verbose, nice=nice)
    spec = _spec(study, root, meta["tracking_uri"], meta["experiment_id"], path, train_fn)
    outcome.planned = meta["planned"]
    study.spec.resources = Resources(**meta["resources"])
    with ray_session(root, address, num_cpus, num_gpus, worker_niceness=nice, log_to_driver=verbose) as started:
        _check_resources(study)
        close_orphaned_runs(spec.tracking_uri, spec.experiment_id, study.name)
        return _fit(lambda console: _tuner(study, spec, None, path.parent, path.name, restore=True,
                                           console=console, verbose=verbose),
                    study, spec, outcome, verbose, nice if started else None)

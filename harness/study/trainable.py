"""One study trial as a Ray Tune function trainable: resolve its config, open its MLflow run
(`harness.study.tracking`), call the training engine and, after every evaluation, log the metrics and
report them to Tune with the checkpoint (`tune.report(..., checkpoint=...)`); every `log_interval`
iterations, log the training means since the previous log to MLflow under `train/` (the engine's
`on_log`, `TrialRun.log_train`; MLflow only: Tune hears of evaluations). A retried or restored
trial continues in the same MLflow run from its newest readable checkpoint: `tune.get_checkpoint()`, or
a newer one already in the trial's folder (the worker writes a checkpoint there before the driver hears
of it: a driver killed in between restores an experiment state without it). A run takes each step once
(`tracking.TrialRun.log_metrics`): evaluations a trial computes again, having restarted from an earlier
point than its run holds, are reported to Tune but not logged again (tag `steps_not_relogged`; the
`train/` logs likewise, tag `train_steps_not_relogged`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.study.trials import Study, absolutize, point_name

LOAD_METRIC = "load_avg_5min"  # the 5-minute load average at each evaluation of a trial
TRAIN_FN = "harness.engine.training:train"  # the function a trial calls (tests inject faults here)


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
    experiment_path: str = ""  # the Tune experiment's folder (trial folders: trial_dirname)
    driver: str = ""  # the study driver (session.driver_mark): the MLflow tag `driver`


def trial_dirname(trial_id: str) -> str:
    """A trial's folder in its Tune experiment's folder."""
    return f"trial_{trial_id}"


def import_train_fn(path: str):
    """The function `module:name` a trial calls to train (TRAIN_FN, or a test's)."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def takes_on_log(fn) -> bool:
    """Whether a train function takes `on_log` (the engine's does; a test's wrapper may not, and then
    its trials log evaluations only)."""
    import inspect

    params = inspect.signature(fn).parameters
    return "on_log" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _checkpoint_index(folder: Path) -> int:
    """Tune's checkpoint folders are `checkpoint_<index>` (index rising through the trial's life)."""
    tail = folder.name.removeprefix("checkpoint_")
    return int(tail) if folder.name.startswith("checkpoint_") and tail.isdigit() else -1


def resume_point(spec: TrialSpec, trial_id: str, checkpoint):
    """The newest readable checkpoint of the trial: a folder of the trial's own newer than Tune's
    (`checkpoint`, from the experiment state), else Tune's; None when there is none."""
    from harness.engine import checkpoint as ckpt

    if not spec.experiment_path:
        return checkpoint
    known = _checkpoint_index(Path(checkpoint.path)) if checkpoint is not None else -1
    folder = Path(spec.experiment_path) / trial_dirname(trial_id)
    newer = sorted((p for p in folder.glob("checkpoint_*") if _checkpoint_index(p) > known),
                   key=_checkpoint_index, reverse=True)
    for path in newer:
        try:
            ckpt.load(path)  # complete and readable (a copy cut short by a kill is not)
        except (ValueError, OSError):
            continue
        print(f"udabench: trial {trial_id} continues from {path} (written before its study driver stopped; "
              f"Tune's experiment state knew {checkpoint.path if checkpoint is not None else 'no checkpoint'})",
              flush=True)
        return path
    return checkpoint


def trainable(config: dict[str, Any], spec: TrialSpec) -> None:
    """One study trial (runs in a Ray worker)."""
    import shutil

    from ray import tune

    from harness.engine.runtime import settings_for
    from harness.engine.training import pick_device
    from harness.study import tracking

    study = spec.study
    point = dict(config["point"])
    cfg = study.resolve(point)
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    workdir = Path.cwd().resolve()
    train_cfg = absolutize(cfg, spec.root, workdir / "run", spec.threads)

    tags = {
        "study": study.name, "scale": study.scale, "config_hash": cfg.hash(),
        "trial_name": point_name(point), "git_commit": spec.git_commit, "git_dirty": spec.git_dirty,
        "device": str(pick_device(cfg.device)), **_node_tags(),
        **settings_for(cfg, pick_device(cfg.device)).as_params(),  # precision, GradScaler, cudnn as resolved
        "study_file_hash": study.text_hash, **tracking.software_tags(),
        **{f"axis.{k}": str(v) for k, v in point.items()},  # exact (a sampled float in full)
    }
    if spec.driver:  # who owns the run while it is RUNNING (a dead driver's runs are closed)
        tags["driver"] = spec.driver
    data_hash = None
    with contextlib.suppress(Exception):  # data may be created by the run itself: tagged after it
        data_hash = tracking.data_hash(train_cfg)
        tags["data_hash"] = data_hash
    run = tracking.TrialRun.open(spec.tracking_uri, spec.experiment_id, trial_id, spec.ray_experiment,
                                 run_name=point_name(point), tags=tags, params=tracking.flatten(cfg.to_dict()))
    resume = None
    checkpoint = resume_point(spec, trial_id, tune.get_checkpoint())
    if checkpoint is not None:
        resume = workdir / "restored"
        shutil.rmtree(resume, ignore_errors=True)
        if isinstance(checkpoint, Path):
            shutil.copytree(checkpoint, resume)
        else:
            checkpoint.to_directory(str(resume))
        kept = workdir / "run" / "checkpoint"  # the weights kept so far go on with the run
        for path in resume.glob("iter_*.pt"):
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, kept / path.name)
    attempt = 1
    if run.resumed:
        prev = run.client.get_run(run.run_id).data.tags
        attempt = int(prev.get("attempt", "1")) + 1
        if "error" in prev:
            run.client.delete_tag(run.run_id, "error")
    run.set_tags({"attempt": str(attempt), "resumed_from_checkpoint": str(resume is not None).lower()})

    def on_eval(iteration: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        # the machine's load beside the timings (the report's cost table shows it): not a result
        run.log_metrics({**metrics, LOAD_METRIC: os.getloadavg()[1]}, step=iteration)
        # the training checkpoint, and the weights kept by iteration (`checkpoint_keep`): Tune keeps the
        # newest checkpoint folder only, so each folder carries every kept file so far
        files = [Path(checkpoint_dir) / "checkpoint.pt", *sorted(Path(checkpoint_dir).glob("iter_*.pt"))]
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            for src in files:
                try:
                    os.link(src, Path(tmp) / src.name)
                except OSError:
                    shutil.copy2(src, Path(tmp) / src.name)
            tune.report({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                        checkpoint=tune.Checkpoint.from_directory(tmp))

    def on_log(iteration: int, metrics: dict[str, float]) -> None:
        run.log_train(metrics, step=iteration)

    try:
        train_fn = import_train_fn(spec.train_fn)
        dense = {"on_log": on_log} if takes_on_log(train_fn) else {}
        final = train_fn(train_cfg, on_eval=on_eval, resume=str(resume) if resume else None, **dense)
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



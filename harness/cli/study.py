"""`udabench study validate|run|resume|status|ray-env`: declarative studies run as Ray Tune experiments.

    udabench study validate studies/*.yaml              # every problem, with its path in the file
    udabench study run studies/mask_ratio.yaml --scale smoke
    udabench study resume studies/mask_ratio.yaml       # after Ctrl-C or a crash
    udabench study status studies/mask_ratio.yaml --scale smoke
    udabench study estimate studies/main.yaml --scale cpu  # how long it takes here, measured
    env $(udabench study ray-env) ray start --head ...  # a cluster for `study run --address`

Heavy imports (ray, mlflow, torch) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

SCALE_HELP = "scale preset: smoke (seconds), demo (minutes), cpu (the synthetic benchmark), paper (GPU)"


def register(sub: argparse._SubParsersAction) -> None:
    from harness.study.runner import (
        ORDERS,  # light: harness.study.runner imports ray and mlflow only when used
    )
    p = sub.add_parser(
        "study", help="run, resume and inspect studies (Ray Tune + MLflow)",
        description="Studies are YAML files (studies/*.yaml) naming a base run config and a grid of "
                    "axes or an Optuna search. Each trial is a Ray Tune trial and an MLflow run.")
    actions = p.add_subparsers(dest="study_command", metavar="ACTION", parser_class=sub._parser_class)
    actions.required = True

    v = actions.add_parser("validate", help="check study files (every problem, nothing runs)",
                           description="Validate study files: every problem is reported with its path "
                                       "in the file; nothing is started or written. Exit code 2 on "
                                       "any problem.")
    v.add_argument("studies", nargs="+", metavar="STUDY")
    v.add_argument("--scale", action="append", help="scale(s) to validate at (default: every scale)")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(func=cmd_validate)

    r = actions.add_parser("run", help="run a study's unfinished trials",
                           description="Run a study as a Ray Tune experiment; each trial is an MLflow "
                                       "run in the experiment named after the study. Trials whose "
                                       "resolved config already finished in the tracking store on the "
                                       "same data (data hash) are skipped unless --force. "
                                       "MLFLOW_TRACKING_URI selects the store (default: sqlite under "
                                       "<root>/mlruns).")
    _common(r)
    r.add_argument("--scale", default="cpu", help=SCALE_HELP + " (default: cpu)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field in every trial (repeatable)")
    r.add_argument("--force", action="store_true", help="run trials that already finished again")
    r.add_argument("--cover", action="store_true",
                   help="a quick check: only a few grid trials in which every axis value appears at least "
                        "once (a search: 2 samples)")
    r.add_argument("--order", choices=ORDERS, default="file",
                   help="start order of a grid's trials: file order (default), or longest: the costliest "
                        "first, measured here by timing a few steps of each cost group as `study "
                        "estimate` does (fills the slots better when costs differ)")
    r.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: study file, then scale)")
    r.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default: study file, then scale)")
    r.set_defaults(func=cmd_run)

    s = actions.add_parser("resume", help="finish an interrupted study run",
                           description="Restore the latest Ray Tune experiment of a study "
                                       "(Tuner.restore): finished trials are kept, interrupted and "
                                       "failed ones continue from their last checkpoint.")
    _common(s)
    s.add_argument("--scale", help="which scale's latest run (default: the latest of any scale)")
    s.add_argument("--experiment", metavar="PATH", help="a results folder under <root>/ray_results")
    s.set_defaults(func=cmd_resume)

    t = actions.add_parser("status", help="table of a study's trials (axes, state, best mIoU, time)")
    t.add_argument("study", metavar="STUDY")
    t.add_argument("--scale", default="cpu", help=SCALE_HELP + " (default: cpu)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--root", default=".", help="project folder (default: the current directory)")
    t.add_argument("--format", choices=("table", "csv", "json"), default="table")
    t.set_defaults(func=cmd_status)

    x = actions.add_parser("estimate", help="how long a study takes here (times one trial per cost group)",
                           description="Estimate a study's run time on this machine: one trial of each "
                                       "cost group (same model, host and auxiliary tasks) is built and "
                                       "timed for a few real training steps and one evaluation; trials "
                                       "are then placed on the concurrent slots in file order (or "
                                       "--order longest). Nothing "
                                       "is tracked or written (a temporary folder is used). See "
                                       "harness/study/estimate.py.")
    x.add_argument("studies", nargs="+", metavar="STUDY")
    x.add_argument("--scale", action="append", help=SCALE_HELP + "; repeatable (default: cpu)")
    x.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    x.add_argument("--root", default=".", help="project folder: data paths (default: the current directory)")
    x.add_argument("--steps", type=int, default=5, help="timed training steps per group (default: 5)")
    x.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    x.add_argument("--concurrency", type=int,
                   help="trials at once (default: CPUs / CPUs per trial, capped by max_concurrent)")
    x.add_argument("--contention", type=float,
                   help="slow-down of trials running side by side (default: the measured factor in "
                        "harness/study/estimate.py)")
    x.add_argument("--order", choices=ORDERS, default="file",
                   help="start order of the trials, as `study run --order` (default: file)")
    x.add_argument("--json", metavar="PATH", help="also write the estimate as JSON")
    x.set_defaults(func=cmd_estimate)

    e = actions.add_parser("ray-env", help="print the environment for `ray start` on this machine",
                           description="KEY=VALUE lines for `env $(udabench study ray-env) ray start ...`: "
                                       "usage stats off and a HOME whose ray_bootstrap_config.yaml stops "
                                       "Ray's cloud-metadata probes (see harness/study/session.py).")
    e.add_argument("--root", default=".", help="project folder (default: the current directory)")
    e.set_defaults(func=cmd_ray_env)


def _common(p: argparse.ArgumentParser) -> None:
    from harness.study.session import TRIAL_NICENESS

    p.add_argument("study", metavar="STUDY", help="study file (studies/*.yaml)")
    p.add_argument("--root", default=".", help="project folder: data paths, mlruns/, ray_results/ "
                                               "(default: the current directory)")
    p.add_argument("--address", help="join this Ray cluster (host:port) instead of starting Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray (default: all)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's output (its `== Status ==` block, log records) and every trial's output "
                        "lines on the console, as event lines; by default they go to files in the Tune "
                        "experiment folder (ray.log, trial_*/output.log) and the console shows one table of "
                        "the trials (a terminal) or one line per trial event (a log file)")
    p.add_argument("--nice", type=int, default=TRIAL_NICENESS, metavar="N",
                   help="run the trials N niceness steps below the study's own priority, as `nice -n N` "
                        "(0-19; default: %(default)s, the trials at this command's priority; Ray's own "
                        "default would be 15). With --address: below the Ray node that starts them")


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.scales import SCALES
    from harness.study.load import load_study
    from harness.study.spec import StudyError
    from harness.study.trials import study_summary

    scales = args.scale or list(SCALES)
    problems = []
    for path in args.studies:
        for scale in scales:
            try:
                study = load_study(path, scale, args.overrides)
            except StudyError as e:
                problems.append(f"[scale {scale}] {e}")
                break
            print(f"{path}: ok at scale {scale}: {study_summary(study)}")
    if problems:
        raise StudyError("\n".join(problems))
    return 0


def _load(args: argparse.Namespace, scale: str):
    from harness.study.load import load_study
    from harness.study.spec import Resources

    study = load_study(args.study, scale, getattr(args, "overrides", None))
    cpu, gpu = getattr(args, "cpus_per_trial", None), getattr(args, "gpus_per_trial", None)
    from harness.errors import UsageError

    if cpu is not None and not cpu > 0:
        raise UsageError(f"--cpus-per-trial: expected a number > 0, got {cpu:g}")
    if gpu is not None and not gpu >= 0:
        raise UsageError(f"--gpus-per-trial: expected a number >= 0, got {gpu:g}")
    if cpu is not None or gpu is not None:
        r = study.resources()
        study.spec.resources = Resources(cpu=r["cpu"] if cpu is None else cpu, gpu=r["gpu"] if gpu is None else gpu)
    return study


def _report(outcome, root: str) -> int:
    from harness.study import tracking

    if outcome.ray_experiment is None:
        return 0
    print(f"udabench: study '{outcome.study}': {outcome.finished} finished, {outcome.errored} failed, "
          f"{outcome.skipped} skipped; MLflow: {tracking.tracking_uri(root)} experiment '{outcome.study}'; "
          f"Ray Tune results: {outcome.path}")
    for name, err in outcome.errors.items():
        print(f"  failed: {name}: {err}", file=sys.stderr)
    if outcome.interrupted:
        print("udabench: interrupted; `udabench study resume` continues from the last checkpoints",
              file=sys.stderr)
    return outcome.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    from harness.study import tracking
    from harness.study.runner import run_study
    from harness.study.session import check_niceness

    check_niceness(args.nice)
    study = _load(args, args.scale)
    tracking.check_store(tracking.tracking_uri(args.root), write=True)  # a damaged store: before Ray starts
    return _report(run_study(study, args.root, args.address, force=args.force, cover=args.cover,
                             num_cpus=args.num_cpus, num_gpus=args.num_gpus, order=args.order,
                             verbose=args.verbose, nice=args.nice), args.root)


def cmd_resume(args: argparse.Namespace) -> int:
    from harness.study.runner import resume_study
    from harness.study.session import check_niceness

    check_niceness(args.nice)
    return _report(resume_study(args.study, args.root, args.scale, args.address, args.num_cpus,
                                args.num_gpus, args.experiment, verbose=args.verbose, nice=args.nice), args.root)


def status_rows(study, root: str = ".") -> list[dict[str, Any]]:
    """One row per trial (`harness.study.console.TrialState.row`): axes, state (pending when never run),
    iteration, loss, best target mIoU, img/s, time, ETA, run id. A trial's run is the best-ended, then
    latest, of its runs on the data it would read now; failing that, of its runs on other data, shown as
    e.g. 'FINISHED (other data)' (`study run` runs such a trial again)."""
    return [t.row() for t in trial_states(study, root)]


def trial_states(study, root: str = ".") -> list:
    """The trials of a study as the MLflow store (and, for a running trial, its output file in the Tune
    experiment folder: the engine's progress lines) record them now: the rows of the study's console."""
    import contextlib
    import math
    import time
    from pathlib import Path

    from harness.study import console as live
    from harness.study import tracking
    from harness.study.runner import RESULTS_DIR, data_hashes

    uri = tracking.tracking_uri(root)
    tracking.check_store(uri)  # status only reads: an empty, damaged or older store is refused, not changed
    exp = tracking.experiment_id(uri, study.name) if tracking.store_exists(uri) else None
    runs = tracking.search(uri, exp, f"tags.scale = '{study.scale}'") if exp else []
    rank = {"FINISHED": 3, "RUNNING": 2, "FAILED": 1, "KILLED": 0}

    def state(point: dict[str, Any], run, data: str | None = None, cfg=None) -> live.TrialState:
        t = live.TrialState(dict(point))
        with contextlib.suppress(Exception):  # a point that does not resolve: no schedule
            cfg = cfg or study.resolve(point)
            t.iterations, t.images_per_step = cfg.schedule.iterations, 2 * cfg.data.batch_size
        if run is None:
            return t
        info = run.info
        end = info.end_time or int(time.time() * 1000)
        best = tracking.best_metric(uri, info.run_id, "target_miou")
        t.state = info.status if on_data(run, data) else f"{info.status} (other data)"
        t.best = None if math.isnan(best) else best
        t.time_s, t.run_id = (end - info.start_time) / 1000, info.run_id[:8]
        progress = {}
        if info.status == "RUNNING":
            folder = Path(root).resolve() / RESULTS_DIR / run.data.tags.get("ray_experiment", "?")
            progress = _progress(live.output_path(folder, run.data.tags.get("trial_id", "?")))
        if not progress:
            m = run.data.metrics
            losses = [v for k, v in m.items() if k.startswith("loss/")]
            progress = {"iteration": m.get("iteration"), "img_s": m.get("throughput"),
                        "loss": sum(losses) if losses else None}
        t.update(progress)
        return t

    def on_data(run, data: str | None) -> bool:  # unknown data now (missing): any run counts
        return data is None or run.data.tags.get("data_hash") == data

    if study.is_search:
        return [state({k: v for k, v in tracking.iter_tags(r, "axis.")}, r)
                for r in sorted(runs, key=lambda r: r.info.start_time)]
    trials = study.trials()
    now = dict(zip([t.hash for t in trials], data_hashes([t.config for t in trials], root))) if runs else {}

    def key(r) -> tuple:
        data = now.get(r.data.tags.get("config_hash"))
        return on_data(r, data), rank.get(r.info.status, 0), r.info.start_time

    best: dict[str, Any] = {}
    for r in runs:
        h = r.data.tags.get("config_hash")
        if h not in best or key(r) > key(best[h]):
            best[h] = r
    return [state(t.point, best.get(t.hash), now.get(t.hash), t.config) for t in trials]


def _progress(path) -> dict[str, Any]:
    """The latest progress of a running trial's current attempt, from its output file (the last 64 KB)."""
    from harness.study.console import parse_line

    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    found: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.rsplit("\r", 1)[-1]
        if line.startswith("--- udabench: trial "):  # a new attempt starts
            found = {}
        elif (values := parse_line(line)) is not None and "loss" in values:
            found = values
    return found


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from harness.study import console as live
    from harness.study import tracking

    study = _load(args, args.scale)
    with tracking.store_errors(tracking.tracking_uri(args.root)):  # a store failing mid-read: one line
        states = trial_states(study, args.root)
    rows = [t.row() for t in states]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if args.format == "csv":
        import csv

        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(sys.stdout, keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    running = sum(t.running for t in states)
    eta = f"; ETA of the study {live.fmt_duration(live.study_eta(states, running))}" if running else ""
    print(f"study '{study.name}' at scale '{study.scale}': {len(rows)} trial(s); {live.counts(states)}{eta}")
    for line in live.format_table(rows):
        print(line)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from harness.data.io import atomic_write_text
    from harness.errors import UsageError
    from harness.study import estimate as est
    from harness.study.load import load_study

    if args.steps < 1 or args.warmup < 0:
        raise UsageError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency: expected an integer >= 1, got {args.concurrency}")
    if args.contention is not None and not args.contention >= 1.0:
        raise UsageError(f"--contention: expected a number >= 1.0, got {args.contention:g}")
    scales = args.scale or ["cpu"]
    studies = [load_study(path, scale, args.overrides) for path in args.studies for scale in scales]
    contention = est.CONTENTION if args.contention is None else args.contention
    cache: dict = {}  # one measurement per cost group, shared by every study and scale
    results = []
    for study in studies:
        res = est.estimate(study, args.root, args.steps, args.warmup, args.concurrency, contention,
                           progress=lambda msg: print(msg, file=sys.stderr, flush=True), cache=cache,
                           longest=args.order == "longest")
        results.append(res)
        print(f"study '{res.study}' at scale '{res.scale}': {res.trials} trial(s), "
              f"{len(res.groups)} cost group(s)")
        print(f"  {'group':<50} {'trials':>6} {'start s':>8} {'step s':>7} {'iters':>6} {'eval s':>7} "
              f"{'evals':>5} {'per trial':>13}")
        for g in res.groups:
            print(f"  {g.key:<50} {g.trials:>6} {g.startup_s:>8.1f} {g.step_s:>7.3f} {g.iterations:>6} "
                  f"{g.eval_s:>7.1f} {g.evaluations:>5} {est.fmt_duration(g.trial_s):>13}")
        print(f"  expected wall time: {est.fmt_duration(res.wall_s())} ({res.concurrency} trial(s) at once, "
              f"contention x{res.contention:.2f}); CPU time {est.fmt_duration(res.cpu_s)}", flush=True)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0


def cmd_ray_env(args: argparse.Namespace) -> int:
    from harness.study.session import ray_node_env

    for k, v in ray_node_env(args.root).items():
        print(f"{k}={v}")
    return 0

"""What the study harness costs: the same N trials run by a plain Python loop over `train()` and by
`udabench study run` (Ray Tune + MLflow), and what running two trials at once on two cores gains.

Every measurement is the wall time of one fresh process, imports included, on a fresh project folder
(its own MLflow store): the loop process resolves the study's trials exactly as the runner does
(`load_study`, `harness.study.trials.absolutize`, one torch thread) and calls `harness.engine.training.train` on
each in turn; the study process is the real command. The study is a grid over seeds of
studies/configs/daformer.yaml at a scale (default smoke, with `--iterations` iterations and one
evaluation at the end), once with `max_concurrent: 1` (trials one after another, like the loop) and
once with `max_concurrent: 2` (one CPU each, on a 2-CPU Ray). Measurements are interleaved per repeat.

    .venv/bin/python benchmarks/bench_overhead.py --trials 4 --iterations 10 --repeats 1

Reported: loop and study wall times, their ratio (the harness's overhead: Ray start and shutdown,
trial actors, MLflow logging, checkpoints reported to Tune), the MLflow-recorded trial durations, and
the speed-up of 2 concurrent trials, end to end and over the trial phase (first trial start to last
trial end, as MLflow recorded them: without Ray's fixed start-up cost, which short trials do not
amortise). Writes JSON (default reports/bench_overhead.json, atomically).
Every process a measurement starts carries a token in its environment; none may be left afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOKEN = "UDABENCH_BENCH_TOKEN"

LOOP = """
import sys, time
from pathlib import Path
from harness.env import offline
offline()
from harness.study.trials import absolutize
from harness.study.load import load_study
from harness.engine.training import train
study_file, scale, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
study = load_study(study_file, scale, sys.argv[4:])
for t in study.trials():
    cfg = absolutize(t.config, root, root / "loop" / t.name, threads=1)
    train(cfg, progress=False)
"""


def marked(token: str) -> list[int]:
    """Live processes whose environment carries TOKEN=token (everything a run started)."""
    from harness.study.session import marked_processes

    return sorted(marked_processes(token, env_key=TOKEN))


def leftovers(token: str, grace: float = 20.0) -> list[int]:
    """Processes of this measurement still alive after `grace` seconds (ended, by pid, if any)."""
    deadline = time.monotonic() + grace
    while (left := marked(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def project(workdir: Path, name: str, data_root: Path, trials: int, concurrent: int) -> tuple[Path, Path]:
    """A fresh project folder with datasets/synthetic and the study file."""
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "synthetic").symlink_to(data_root)
    study = root / "overhead.yaml"
    study.write_text(textwrap.dedent(f"""\
        name: overhead
        description: benchmarks/bench_overhead.py - the same trials by a loop and by the harness
        config: {ROOT / 'studies' / 'configs' / 'daformer.yaml'}
        max_concurrent: {concurrent}
        grid:
          seed: {list(range(trials))}
        """))
    return root, study


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return wall


def trial_times(root: Path) -> tuple[list[float], float]:
    """Durations (end - start) of the study's MLflow runs, and the span from the first start to the
    last end (the trial phase, without Ray's start and shutdown)."""
    from harness.study import tracking

    uri = tracking.default_tracking_uri(root)
    runs = tracking.search(uri, tracking.experiment_id(uri, "overhead"))
    if any(r.info.status != "FINISHED" for r in runs):
        raise RuntimeError(f"{root}: not every trial finished: {[r.info.status for r in runs]}")
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    return [(r.info.end_time - r.info.start_time) / 1000 for r in runs], span


def measure(kind: str, args: argparse.Namespace, data_root: Path, rep: int) -> dict[str, Any]:
    concurrent = 2 if kind == "study x2" else 1
    root, study = project(args.workdir, f"{kind.replace(' ', '_')}-{rep}", data_root, args.trials, concurrent)
    overrides = [f"schedule.iterations={args.iterations}", f"eval.interval={args.iterations}",
                 f"eval.max_images={args.eval_images}", f"log_interval={args.log_interval}"]
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({TOKEN: token, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    if kind == "loop":
        cmd = [sys.executable, "-c", LOOP, str(study), args.scale, str(root), *overrides]
    else:
        cmd = [str(Path(sys.executable).parent / "udabench"), "study", "run", str(study), "--scale", args.scale,
               "--root", str(root), "--num-cpus", "2"]
        cmd += [x for o in overrides for x in ("--set", o)]
    wall = timed(cmd, root, env, root / "log.txt")
    left = leftovers(token)
    out = {"kind": kind, "repeat": rep, "wall_s": wall, "processes_left": len(left),
           "load_avg_1m": os.getloadavg()[0]}
    if kind != "loop":
        out["trial_s"], out["trials_span_s"] = trial_times(root)
    print(f"[{rep + 1}/{args.repeats}] {kind:8s} {wall:6.1f} s wall"
          + (f", trials {out['trials_span_s']:.1f} s from first start to last end (MLflow)"
             if "trial_s" in out else ""), file=sys.stderr)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return out


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    def med(kind: str) -> float:
        return statistics.median(r["wall_s"] for r in results if r["kind"] == kind)

    loop, study, study2 = med("loop"), med("study"), med("study x2")
    reps = sorted({r["repeat"] for r in results})

    def per_rep(a: str, b: str) -> list[float]:
        w = {(r["kind"], r["repeat"]): r["wall_s"] for r in results}
        return [w[(b, k)] / w[(a, k)] for k in reps]

    def span(kind: str) -> float:
        return statistics.median(r["trials_span_s"] for r in results if r["kind"] == kind)

    return {"loop_s": loop, "study_s": study, "study_concurrent_s": study2,
            "trials_span_s": span("study"), "trials_span_concurrent_s": span("study x2"),
            "trial_phase_speedup": span("study") / span("study x2"),
            "overhead_ratio": study / loop, "overhead_ratios": per_rep("loop", "study"),
            "overhead_s": study - loop, "concurrency_speedup": study / study2,
            "concurrency_speedups": [1 / x for x in per_rep("study", "study x2")],
            "study_trial_s_median": statistics.median(
                t for r in results if r["kind"] == "study" for t in r["trial_s"]),
            "processes_left": sum(r["processes_left"] for r in results)}


def markdown(s: dict[str, Any], args: argparse.Namespace) -> str:
    return "\n".join([
        f"{args.trials} trials (seeds of studies/configs/daformer.yaml at scale {args.scale}, "
        f"{args.iterations} iterations, one evaluation), median of {args.repeats} repeat(s), wall time of a "
        "fresh process each:",
        "",
        "| run by | wall time (s) | ratio to the loop |",
        "|---|---:|---:|",
        f"| plain Python loop over `train()` | {s['loop_s']:.1f} | 1 |",
        f"| `udabench study run` (max_concurrent 1) | {s['study_s']:.1f} | {s['overhead_ratio']:.2f} |",
        f"| `udabench study run` (max_concurrent 2, 2 CPUs) | {s['study_concurrent_s']:.1f} | "
        f"{s['study_concurrent_s'] / s['loop_s']:.2f} |",
        "",
        f"Harness overhead: {s['overhead_s']:+.1f} s for {args.trials} trials (x{s['overhead_ratio']:.2f}); "
        f"2 concurrent trials: speed-up x{s['concurrency_speedup']:.2f} end to end, "
        f"x{s['trial_phase_speedup']:.2f} over the trial phase (first trial start to last trial end in "
        f"MLflow: {s['trials_span_s']:.1f} s one at a time, {s['trials_span_concurrent_s']:.1f} s two at a "
        f"time); median trial {s['study_trial_s_median']:.1f} s; processes left behind: {s['processes_left']}.",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4, help="trials (seeds) per measurement")
    p.add_argument("--iterations", type=int, default=10, help="training iterations per trial")
    p.add_argument("--eval-images", type=int, default=2, help="validation images per evaluation")
    p.add_argument("--log-interval", type=int, default=20,
                   help="iterations between training logs (study trials send them to MLflow; the cpu scale's 20)")
    p.add_argument("--scale", default="smoke", help="scale preset of the trials (default smoke)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data-size", type=int, default=64, help="synthetic images are 2*size x size")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-overhead"))
    p.add_argument("--keep", action="store_true", help="keep the project folders (logs, stores)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_overhead.json")
    args = p.parse_args(argv)

    from bench_aux import ensure_data

    from harness.env import offline

    offline()
    t0 = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data_root = ensure_data(args.workdir, args.data_size)
    results = []
    for rep in range(args.repeats):
        for kind in ("loop", "study", "study x2"):
            results.append(measure(kind, args, data_root, rep))
    summary = summarise(results)
    table = markdown(summary, args)
    print(table)
    report = {
        "command": "benchmarks/bench_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"trials": args.trials, "iterations": args.iterations, "scale": args.scale,
                     "log_interval": args.log_interval,
                     "eval_images": args.eval_images, "repeats": args.repeats, "data_size": args.data_size},
        "environment": {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "load_avg_1m_at_end": os.getloadavg()[0]},
        "wall_time_s": time.perf_counter() - t0,
        "summary": summary, "runs": results, "markdown": table,
    }
    from harness.data.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

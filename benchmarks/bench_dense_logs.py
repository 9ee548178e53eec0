"""What the dense `train/` logs cost (issue 21): in a trial, and in the report.

    .venv/bin/python benchmarks/bench_dense_logs.py train --arch daformer --log-interval 20 --iterations 200
    .venv/bin/python benchmarks/bench_dense_logs.py report --rounds 2

`train`: one real cpu-scale run (studies/configs/base.yaml, DACS) logging through `TrialRun.log_train`
into a fresh sqlite store, as a study trial does; prints the median time of a log call, the median step
time of the logged windows and the logs' share of the training time. `report`: the store of
benchmarks/bench_report.py (1,000 runs in 4 studies, reused from --workdir) and a copy in which every
run has `train/` logs as a cpu-scale trial writes them (2,000 iterations, every 20: 100 logs of each loss,
the pseudo-label weight, throughput, step time and lr); times `udabench report` on both, interleaved,
wall and CPU time, with the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_train(arch: str, interval: int, iterations: int) -> None:
    from harness.engine.resolve import load_config
    from harness.engine.training import train
    from harness.scales import scale_overlay
    from harness.study import tracking

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"model.arch={arch}", f"schedule.iterations={iterations}", f"eval.interval={iterations}",
                     "eval.max_images=2", f"output={tmp}/run", f"log_interval={interval}"]
        cfg = load_config(str(ROOT / "studies" / "configs" / "base.yaml"), overrides,
                          extra=scale_overlay("cpu", arch))
        uri = tracking.default_tracking_uri(tmp)
        exp = tracking.ensure_experiment(uri, "bench", tmp)
        run = tracking.TrialRun.open(uri, exp, "t", "bench.cpu.x", "r", {"study": "bench"},
                                     tracking.flatten(cfg.to_dict()))
        spent, steps = [], []

        def on_log(iteration: int, metrics: dict[str, float]) -> None:
            t = time.perf_counter()
            run.log_train(metrics, step=iteration)
            spent.append(time.perf_counter() - t)
            steps.append(metrics["step_time"])

        load = os.getloadavg()[0]
        train(cfg, on_log=on_log, progress=False)
        step = statistics.median(steps)
        print(f"{arch}, log_interval {interval}, {iterations} iterations: {len(spent)} logs; log call median "
              f"{1000 * statistics.median(spent):.2f} ms (max {1000 * max(spent):.1f}); step time median "
              f"{step:.3f} s; logs' share of training time {100 * sum(spent) / (step * iterations):.2f}%; "
              f"load {load:.2f} -> {os.getloadavg()[0]:.2f}")


def add_train_logs(uri: str, study: str, every: int = 20, iterations: int = 1000,
                   step_time_and_lr: bool = False) -> int:
    """`train/` logs every `every` iterations up to `iterations` for each run of `study` (in trial order),
    as `TrialRun.log_train` writes them: each loss the run logs at evaluations, the pseudo-label weight
    and the throughput, noisy (each run its own seed); with `step_time_and_lr` the step time and learning
    rate too. Returns the number of runs. tests/test_dense_curves.py draws its dense curves from these."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from harness.study.tracking import TRAIN

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=50000, order_by=["tags.trial_id"])
    for i, run in enumerate(runs):
        rng = np.random.default_rng(i)
        losses = [k for k in run.data.metrics if k.startswith("loss/")]
        items = []
        for step in range(every, iterations + 1, every):
            t = step / iterations
            values = {**{TRAIN + k: math.exp(-2 * t) * (1 + 0.3 * rng.normal()) for k in losses},
                      TRAIN + "stat/pseudo_weight": min(1.0, t + 0.1 * rng.random()),
                      TRAIN + "throughput": 20 + rng.normal()}
            if step_time_and_lr:
                values.update({TRAIN + "step_time": 0.2 + 0.01 * rng.random(), TRAIN + "lr": 1e-3 * (1 - t)})
            items += [Metric(k, float(v), 1, step) for k, v in values.items()]
        for j in range(0, len(items), 1000):
            client.log_batch(run.info.run_id, metrics=items[j:j + 1000])
    return len(runs)


def densify(src: Path, dst: Path, every: int = 20, iterations: int = 2000) -> None:
    """A copy of the store at `src` in which every run has `train/` logs every `every` iterations."""
    from mlflow import MlflowClient

    shutil.copy(src, dst)
    uri = f"sqlite:///{dst}"
    for exp in MlflowClient(uri).search_experiments():
        add_train_logs(uri, exp.name, every, iterations, step_time_and_lr=True)


def bench_report(workdir: Path, rounds: int) -> None:
    plain = workdir / "mlflow-1000-4-5.db"
    if not plain.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_report.py"), "--runs", "1000",
                        "--studies", "4", "--workdir", str(workdir)], check=True)
    dense = workdir / "dense-1000-4-5.db"
    if not dense.exists():
        densify(plain, dense)
    names = [f"bench_{k}" for k in range(4)]
    for r in range(rounds):
        for label, db in (("without train/ logs", plain), ("with train/ logs", dense)):
            cmd = [str(Path(sys.executable).parent / "udabench"), "report", *names, "--tracking-uri",
                   f"sqlite:///{db}", "--out", str(workdir / f"reports-{db.stem}")]
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            print(f"round {r}, {label}: {wall:.1f} s wall, {cpu:.1f} s CPU; load {load:.2f} -> "
                  f"{os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--arch", default="daformer")
    t.add_argument("--log-interval", type=int, default=20)
    t.add_argument("--iterations", type=int, default=200)
    r = sub.add_parser("report")
    r.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-report"))
    r.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from harness.env import offline

    offline()
    if args.what == "train":
        bench_train(args.arch, args.log_interval, args.iterations)
    else:
        bench_report(args.workdir, args.rounds)


if __name__ == "__main__":
    main()

"""How long `udabench report` takes on a store of many runs.

Fills an sqlite MLflow store with synthetic runs in the tracking schema of ARCHITECTURE.md (one run per
trial, flattened config params, per-evaluation metrics with history, provenance tags; logged in
batches through the MLflow client), then times the real command in a fresh process:

    .venv/bin/python benchmarks/bench_report.py --runs 1000 --studies 4

Prints wall time and CPU time (user + system of the report process and its workers: robust to other
load on a shared machine) per report, and the load average before and after. `udabench report` writes
studies side by side on the CPUs other processes leave idle (its `--jobs` default counts them);
`--jobs N` here passes a fixed number to it. The store is kept under --workdir (default /tmp/udabench-bench-report) and reused when it already
holds the requested runs, so only the first call pays for filling it. `fill_store` is also what the
report tests use for cases real study runs cannot produce cheaply (e.g. mixed data hashes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import RunConfig  # noqa: E402
from harness.labels import CLASSES, SYNTHIA13, SYNTHIA16  # noqa: E402

ARCHS = {"deeplabv2/resnet18": (0.38, 0.20, 900.0), "daformer/pvt_v2_b0": (0.43, 0.11, 700.0)}
AUX = {"none": 0.0, "contrastive": 0.006, "mim": 0.012, "mfm": 0.02}
MASK_RATIOS = (0.2, 0.4, 0.6, 0.8)
CLASS_OFFSET = np.linspace(0.35, -0.3, len(CLASSES))  # frequent classes easy, rare ones hard


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def trial_grid(n_runs: int) -> list[dict]:
    """Trials of one study: architecture x (host only, contrastive, mim, mfm x mask ratio) x seeds,
    seed-major, cut at n_runs (so the last seed may be incomplete, as in a real interrupted grid)."""
    variants = [("none", None), ("contrastive", None), ("mim", None)] + [("mfm", r) for r in MASK_RATIOS]
    trials = []
    seed = 0
    while len(trials) < n_runs:
        for arch in ARCHS:
            for aux, ratio in variants:
                trials.append({"arch": arch, "aux": aux, "mask_ratio": ratio, "seed": seed})
        seed += 1
    return trials[:n_runs]


def synth_metrics(trial: dict, rng: np.random.Generator, seed_effect: float) -> dict[str, float]:
    """Final metrics of one trial (IoU, mIoU, pixel accuracy in percent, as the engine logs them);
    a rare class is absent (not logged) from some runs."""
    base, step_time, mem = ARCHS[trial["arch"]]
    gain = AUX[trial["aux"]]
    if trial["mask_ratio"] is not None:
        gain += 0.015 - 0.06 * (trial["mask_ratio"] - 0.45) ** 2
    miou = base + gain + seed_effect + rng.normal(0, 0.006)
    ious = np.clip(miou + CLASS_OFFSET + rng.normal(0, 0.02, len(CLASSES)), 0.0, 0.99)
    present = np.ones(len(CLASSES), bool)
    present[16] = rng.random() > 0.3  # "train" absent from some runs' predictions and GT
    ious = 100 * ious
    out = {f"iou/{c.replace(' ', '_')}": float(v) for c, v, p in zip(CLASSES, ious, present) if p}
    out["target_miou"] = float(np.mean(ious[present]))
    out["target_miou16"] = float(np.mean([ious[i] for i in SYNTHIA16 if present[i]]))
    out["target_miou13"] = float(np.mean([ious[i] for i in SYNTHIA13 if present[i]]))
    out["pixel_acc"] = float(100 * min(0.99, miou + 0.4))
    factor = {"none": 1.0, "contrastive": 1.15, "mim": 1.25, "mfm": 1.35}[trial["aux"]]
    out["step_time"] = float(step_time * factor * rng.uniform(0.97, 1.03))
    out["throughput"] = 4.0 / out["step_time"]
    out["peak_mem_mb"] = float(mem * (1 + (factor - 1) / 2))
    return out


def fill_store(uri: str, n_runs: int = 1000, studies: int = 4, evals: int = 5, iterations: int = 1000,
               seed: int = 0, data_hash: str | dict[int, str] = "synthetic-0123abcd",
               git_commit: str = "0" * 40, scale: str = "cpu", prefix: str = "bench", protocol: str = "19",
               failed: int = 0, host: str = "dacs") -> list[str]:
    """Log `n_runs` runs spread over `studies` experiments named `<prefix>_<k>`; the last `failed` runs
    of each study end FAILED. `data_hash` may map a trial index to a different hash (to make a mixed
    study); `protocol` "16" makes SYNTHIA-protocol runs; `host` sets method.host. Returns the study names."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    rng = np.random.default_rng(seed)
    names = []
    per_study = [n_runs // studies + (1 if k < n_runs % studies else 0) for k in range(studies)]
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    for k, count in enumerate(per_study):
        name = f"{prefix}_{k}"
        names.append(name)
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            name, artifact_location=(artifacts / name).resolve().as_uri())
        seed_effects: dict[int, float] = {}
        for i, trial in enumerate(trial_grid(count)):
            s = trial["seed"]
            seed_effects.setdefault(s, float(rng.normal(0, 0.015)))
            cfg = RunConfig()
            arch, backbone = trial["arch"].split("/")
            cfg.model.arch, cfg.model.backbone = arch, backbone
            cfg.seed = s
            cfg.method.host = host
            cfg.schedule.iterations = iterations
            cfg.eval.interval = iterations // evals
            cfg.eval.protocol = protocol
            if protocol != "19":
                cfg.data.source.name = "synthia"
            if trial["aux"] != "none":
                options = {"mask_ratio": trial["mask_ratio"]} if trial["aux"] == "mfm" else {}
                cfg.method.aux = {trial["aux"]: {"options": options}}
            params = flatten(cfg.to_dict())
            trial_id = f"{name}_{i:05d}" if host == "dacs" else f"{name}_{host}_{i:05d}"
            dh = data_hash.get(i, "synthetic-0123abcd") if isinstance(data_hash, dict) else data_hash
            tags = {"study": name, "trial_id": trial_id, "axis.model": trial["arch"],
                    "axis.aux": trial["aux"], "axis.mask_ratio": str(trial["mask_ratio"] or 0.4),
                    "axis.seed": str(s), "git_commit": git_commit, "git_dirty": "false",
                    "data_hash": dh, "config_hash": cfg.hash(), "python": "3.11", "torch": "2.14.1",
                    "cuda": "none", "device": "cpu", "scale": scale}
            run = client.create_run(exp_id, tags=tags, run_name=trial_id)
            final = synth_metrics(trial, rng, seed_effects[s])
            ts = int(time.time() * 1000)
            metrics = []
            for e in range(1, evals + 1):
                step = e * iterations // evals
                ramp = 1 - math.exp(-3 * e / evals)
                for key, value in final.items():
                    v = value * ramp / (1 - math.exp(-3)) if key.startswith(("iou/", "target_", "pixel")) else value
                    metrics.append(Metric(key, float(v), ts + e, step))
                metrics.append(Metric("loss/source_ce", 1.5 * math.exp(-2 * e / evals), ts + e, step))
                metrics.append(Metric("loss/mixed_ce", 1.2 * math.exp(-1.5 * e / evals), ts + e, step))
                if trial["aux"] != "none":
                    metrics.append(Metric(f"loss/{trial['aux']}", math.exp(-e / evals), ts + e, step))
            client.log_batch(run.info.run_id, metrics=metrics,
                             params=[Param(key, str(v)) for key, v in params.items()],
                             tags=[RunTag("mlflow.source.name", "bench_report.py")])
            client.set_terminated(run.info.run_id, "FAILED" if i >= count - failed else "FINISHED")
    return names


def count_runs(uri: str, names: list[str]) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    total = 0
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp:
            total += len(client.search_runs([exp.experiment_id], max_results=50000))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--evals", type=int, default=5, help="evaluations (history points) per run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-report"))
    ap.add_argument("--repeat", type=int, default=1, help="time the report this many times")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--jobs", type=int, default=None,
                    help="pass --jobs N to the report (default: the report's own, one worker per idle CPU)")
    args = ap.parse_args()

    from harness.env import offline

    offline()
    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.workdir / f"mlflow-{args.runs}-{args.studies}-{args.evals}.db"
    uri = f"sqlite:///{db.resolve()}"
    names = [f"bench_{k}" for k in range(args.studies)]
    fill_s = None
    if not db.exists() or count_runs(uri, names) != args.runs:
        db.unlink(missing_ok=True)
        t0 = time.perf_counter()
        fill_store(uri, args.runs, args.studies, args.evals)
        fill_s = time.perf_counter() - t0
        print(f"filled {db} with {args.runs} runs in {fill_s:.1f} s")
    out = args.workdir / "reports"
    cmd = [str(Path(sys.executable).parent / "udabench"), "report", *names, "--tracking-uri", uri,
           "--out", str(out), *([] if args.jobs is None else ["--jobs", str(args.jobs)])]
    times, cpu = [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    result = {"runs": args.runs, "studies": args.studies, "evals_per_run": args.evals,
              "report_s": [round(t, 2) for t in times], "report_s_median": round(float(np.median(times)), 2),
              "report_cpu_s": [round(c, 2) for c in cpu], "report_cpu_s_median": round(float(np.median(cpu)), 2),
              "load_average_1min_before": round(load_before, 2), "load_average_1min": round(os.getloadavg()[0], 2),
              "fill_s": None if fill_s is None else round(fill_s, 1), "command": " ".join(cmd),
              "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""How close the CPU-scale training step comes to this machine's arithmetic limit.

The limit is measured, not looked up: float32 `torch.mm` of two large square matrices (2 n^3 FLOPs
each), best of several repeats, with one torch thread (what a CPU-scale trial gets) and with every
core. The step is the real engine's: `harness.engine.training.Trainer` built from the CPU-scale config of
benchmarks/bench_aux.py (dacs, crop 128, batch 2, one thread), `Trainer.step` on batches loaded before
the clock starts; its FLOPs come from `flops.counter()` around one step (forward, backward and the
teacher's pseudo-labelling; matmuls and convolutions): torch's `FlopCounterMode` with the backward of
grouped convolutions counted with its groups (torch's own formula counts a depthwise convolution's
weight gradient `channels` times over; tests/test_flops.py checks the counter on plain layers).

Rates are FLOPs per second of CPU time (this single-threaded process's `process_time`), which other
load on the shared machine does not dilute, and per second of wall time, which it does; the fraction
of the limit is CPU-time rate over CPU-time rate.

    .venv/bin/python benchmarks/bench_hardware.py --mm-size 2048 --steps 4

prints a Markdown table and writes JSON (default reports/bench_hardware.json, written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import preload, time_steps  # noqa: E402
from bench_aux import ARCHS, ensure_data, run_config  # noqa: E402


def matmul_peak(n: int, repeats: int, threads: int) -> dict[str, Any]:
    """Best float32 n x n matmul rate over `repeats` (GFLOP/s of CPU time and of wall time)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up (allocations, kernel selection)
    flops = 2 * n ** 3
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"threads": threads, "n": n, "flops": flops,
            "gflops_wall": flops / min(wall) / 1e9, "gflops_cpu": flops / min(cpu) / 1e9,  # per core-second
            "wall_s": wall, "cpu_s": cpu}


def step_rate(arch: str, data_root: Path, size: int, batch: int, steps: int, warmup: int,
              workdir: Path) -> dict[str, Any]:
    """FLOPs of one CPU-scale engine step and its median time (one torch thread)."""
    import torch
    from flops import counter as flop_counter

    from harness.engine.training import Trainer

    torch.set_num_threads(1)
    cfg = run_config(arch, "dacs", data_root, size, batch, workdir / "runs" / f"hw-{arch}")
    trainer = Trainer(cfg, progress=False)
    trainer.model.train()
    batches = preload(trainer, warmup + steps + 1, batch)
    timing, sums = time_steps(trainer, batches[:-1], warmup)
    counter = flop_counter()
    with counter:
        trainer.step(*batches[-1], sums)
    flops = counter.get_total_flops()
    return {"arch": arch, "backbone": ARCHS[arch], "flops_per_step": flops,
            "step_wall_s": timing["step_time"], "step_cpu_s": timing["step_cpu_time"],
            "gflops_wall": flops / timing["step_time"] / 1e9,
            "gflops_cpu": flops / timing["step_cpu_time"] / 1e9,
            "step_wall_all_s": timing["step_times"], "step_cpu_all_s": timing["step_cpu_times"]}


def markdown(rows: list[dict[str, Any]], peaks: dict[int, dict[str, Any]]) -> str:
    one = peaks[1]
    lines = [f"Float32 matmul rate (n = {one['n']}, best of {len(one['cpu_s'])}): "
             + "; ".join(f"{t} thread(s): {p['gflops_cpu']:.1f} GFLOP/s per CPU-second (per core), "
                         f"{p['gflops_wall']:.1f} GFLOP/s wall" for t, p in sorted(peaks.items())),
             "",
             "No fraction of a peak is given: this matmul rate is not a ceiling here (a plain 3x3 convolution "
             "through oneDNN ran faster than MKL's sgemm on the same core, and the rate differs between "
             "machines of this kind), so a ratio to it would not be the step's share of what the hardware can do.",
             "",
             "| architecture | GFLOP per step (checked counter) | step CPU time (s) | GFLOP/s (CPU time) "
             "| step wall time (s) | GFLOP/s (wall) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']}/{r['backbone']} | {r['flops_per_step'] / 1e9:.2f} | {r['step_cpu_s']:.3f} | "
                     f"{r['gflops_cpu']:.1f} | {r['step_wall_s']:.3f} | {r['gflops_wall']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mm-size", type=int, default=2048, help="matrix size n of the peak measurement")
    p.add_argument("--mm-repeats", type=int, default=5, help="timed matmuls per thread count (best is kept)")
    p.add_argument("--size", type=int, default=128, help="square training crop (the CPU scale: 128)")
    p.add_argument("--batch", type=int, default=2, help="source and target batch size (the CPU scale: 2)")
    p.add_argument("--steps", type=int, default=4, help="timed engine steps per architecture")
    p.add_argument("--warmup", type=int, default=1, help="untimed engine steps first")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-aux"),
                   help="synthetic data (shared with bench_aux.py) and scratch output")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_hardware.json")
    args = p.parse_args(argv)

    from harness.env import offline

    offline()
    import torch

    t0 = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data_root = ensure_data(args.workdir, args.size)
    cores = len(os.sched_getaffinity(0))
    peaks = {t: matmul_peak(args.mm_size, args.mm_repeats, t) for t in sorted({1, cores})}
    rows = []
    for arch in args.archs:
        r = step_rate(arch, data_root, args.size, args.batch, args.steps, args.warmup, args.workdir)
        rows.append(r)
        print(f"{arch}: {r['flops_per_step'] / 1e9:.2f} GFLOP/step, {r['gflops_cpu']:.1f} GFLOP/s CPU time "
              f"(1-thread matmul: {peaks[1]['gflops_cpu']:.1f} GFLOP/s)", file=sys.stderr)
    table = markdown(rows, peaks)
    print(table)
    report = {
        "command": "benchmarks/bench_hardware.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"mm_size": args.mm_size, "mm_repeats": args.mm_repeats, "size": args.size,
                     "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "threads": 1},
        "environment": {"python": sys.version.split()[0], "torch": torch.__version__, "cpus": cores,
                        "load_avg_1m_at_end": os.getloadavg()[0]},
        "wall_time_s": time.perf_counter() - t0,
        "matmul_peak": {str(k): v for k, v in peaks.items()}, "rows": rows, "markdown": table,
    }
    from harness.data.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Inference parity: a model trained with an auxiliary task costs nothing extra once trained.

For each CPU-scale architecture, the real engine (`harness.engine.training.train`) trains the host method
(`dacs`) and the host with MFM (`+mfm base`, the released Rebuilder) from the same config for a few
iterations; each run's checkpoint is loaded the way `udabench eval` loads it
(`harness.cli.eval.load_model`: the student only). Then, on one whole validation-sized image:
parameters, FLOPs (`torch.utils.flop_counter.FlopCounterMode`) and forward latency, one torch thread,
`torch.inference_mode`, the two models alternating call by call so load on the shared machine hits both
alike. Latency is CPU time of the (single-threaded) forward, which other load on the machine does not
inflate, and wall time, which it does; the ratio (+MFM / host) is the median of per-round ratios, with
its min-max.

    .venv/bin/python benchmarks/bench_inference.py --iterations 4 --repeats 30

prints a Markdown table and writes JSON (default reports/bench_inference.json, written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_aux import ARCHS, ensure_data, run_config  # noqa: E402

HOST, WITH_MFM = "dacs", "+mfm base"


def trained(arch: str, variant: str, data_root: Path, size: int, iterations: int, workdir: Path):
    """Train `variant` for `iterations` through the engine; return (student, config, aux params)."""
    from harness.cli.eval import load_model
    from harness.engine.training import Trainer

    out = workdir / "inference" / f"{arch}-{variant.replace(' ', '_').replace('+', '')}"
    cfg = run_config(arch, variant, data_root, size, 2, out)
    cfg.schedule.iterations, cfg.schedule.warmup = iterations, 0
    cfg.eval.interval, cfg.eval.max_images = iterations, 1
    trainer = Trainer(cfg, progress=False)
    aux_params = sum(p.numel() for p in trainer.aux.parameters())
    trainer.run()
    model, loaded_cfg = load_model(out / "checkpoint")
    return model.eval(), loaded_cfg, aux_params


def flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops()


def latency(models: dict[str, Any], x, repeats: int, warmup: int = 2
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU seconds and wall seconds per forward of each model, alternating model by model."""
    import torch

    cpu: dict[str, list[float]] = {k: [] for k in models}
    wall: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    with torch.inference_mode():
        for r in range(warmup + repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                w, c = time.perf_counter(), time.process_time()
                models[name](x)
                if r >= warmup:
                    cpu[name].append(time.process_time() - c)
                    wall[name].append(time.perf_counter() - w)
    return cpu, wall


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| architecture | model | parameters | GFLOP per image | latency, CPU time (ms), median [min-max] "
             "| ratio to dacs, median [min-max] | latency, wall (ms) | wall ratio | trained-only aux parameters |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for v in (HOST, WITH_MFM):
            m = r[v]
            ratio = "1 (reference)" if v == HOST else (
                f"{r['latency_ratio']:.3f} [{r['latency_ratio_min']:.3f}-{r['latency_ratio_max']:.3f}]")
            wall_ratio = "1" if v == HOST else f"{r['wall_ratio']:.3f}"
            lines.append(f"| {r['arch']}/{r['backbone']} | {v} | {m['params']:,} | {m['flops'] / 1e9:.3f} | "
                         f"{1000 * m['latency_s']:.1f} [{1000 * m['latency_min_s']:.1f}-"
                         f"{1000 * m['latency_max_s']:.1f}] | {ratio} | {1000 * m['wall_s']:.1f} | {wall_ratio} | "
                         f"{m['aux_params']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="training crop; images are 2*size x size")
    p.add_argument("--iterations", type=int, default=4, help="training iterations per model")
    p.add_argument("--repeats", type=int, default=30, help="timed forwards per model")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-aux"),
                   help="synthetic data (shared with bench_aux.py) and the training runs")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_inference.json")
    args = p.parse_args(argv)
    if args.size % 32:
        p.error(f"--size {args.size}: must be a multiple of 32 (MFM's mask unit)")

    from harness.env import offline

    offline()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data_root = ensure_data(args.workdir, args.size)
    x = torch.randn(1, 3, args.size, 2 * args.size)  # one whole validation image
    rows = []
    for arch in args.archs:
        models, row = {}, {"arch": arch, "backbone": ARCHS[arch]}
        for v in (HOST, WITH_MFM):
            model, cfg, aux_params = trained(arch, v, data_root, args.size, args.iterations, args.workdir)
            models[v] = model
            row[v] = {"params": sum(p.numel() for p in model.parameters()), "flops": flops(model, x),
                      "aux_params": aux_params, "aux_tasks": sorted(cfg.method.aux)}
        times, walls = latency(models, x, args.repeats)
        for v in models:
            row[v].update(latency_s=statistics.median(times[v]), latency_min_s=min(times[v]),
                          latency_max_s=max(times[v]), latency_all_s=times[v],
                          wall_s=statistics.median(walls[v]), wall_all_s=walls[v])
        ratios = [b / a for a, b in zip(times[HOST], times[WITH_MFM])]
        wall_ratios = [b / a for a, b in zip(walls[HOST], walls[WITH_MFM])]
        row.update(latency_ratio=statistics.median(ratios), latency_ratio_min=min(ratios),
                   latency_ratio_max=max(ratios), wall_ratio=statistics.median(wall_ratios),
                   same_params=row[HOST]["params"] == row[WITH_MFM]["params"],
                   same_flops=row[HOST]["flops"] == row[WITH_MFM]["flops"])
        rows.append(row)
        print(f"{arch}: params {row[HOST]['params']:,} vs {row[WITH_MFM]['params']:,}, "
              f"latency ratio {row['latency_ratio']:.3f}", file=sys.stderr)
    table = markdown(rows)
    print(table)
    report = {
        "command": "benchmarks/bench_inference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"size": args.size, "input": [1, 3, args.size, 2 * args.size],
                     "iterations": args.iterations, "repeats": args.repeats, "threads": 1},
        "environment": {"python": sys.version.split()[0], "torch": torch.__version__, "cpus": os.cpu_count(),
                        "load_avg_1m_at_end": os.getloadavg()[0]},
        "wall_time_s": time.perf_counter() - t0, "rows": rows, "markdown": table,
    }
    from harness.data.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the auxiliary tasks cost to train: step time and peak memory of `dacs` + each task relative to
`dacs` alone, on both CPU-scale architectures, and MFM's overhead for each Rebuilder preset.

Every measurement goes through the real engine: `harness.engine.training.Trainer` built from a run config,
then `Trainer.step` (host step, auxiliary losses, backward, optimiser step, EMA update) on batches of
the synthetic benchmark that are loaded before the clock starts (data loading is the same for every
variant and is not what is compared). Each (repeat, architecture, variant) runs in a fresh process
with one torch thread, so peak RSS (`ru_maxrss`, a per-process high-water mark) belongs to that
variant alone; repeats are interleaved so slow drift on the shared machine hits every variant alike.
Step cost is reported as CPU time of the (single-threaded) process, which other load on the machine
does not inflate, and as wall time, which it does.

    .venv/bin/python benchmarks/bench_aux.py --size 128 --batch 2 --steps 8 --repeats 3

prints a Markdown table and writes JSON (default reports/bench_aux.json, written atomically). The
synthetic data is generated once into --workdir (default /tmp/udabench-bench-aux) and reused. The
child processes, the timed steps and the report are benchmarks/_measure.py's (shared with
bench_aux_step.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import cell, first_cells, in_child, measure_all, ms, parser, preload, report, time_steps, values  # noqa: E402

ARCHS = {"deeplabv2": "resnet18", "daformer": "pvt_v2_b0"}
# variant -> method.aux (task name -> AuxConfig fields); defaults of the task otherwise.
VARIANTS: dict[str, dict[str, Any]] = {
    "dacs": {},
    "+contrastive": {"contrastive": {}},
    "+mim mic": {"mim": {"options": {"variant": "mic"}}},
    "+mim recon pixel": {"mim": {"options": {"variant": "recon", "target": "pixel"}}},
    "+mim recon hog": {"mim": {"options": {"variant": "recon", "target": "hog"}}},
    "+mfm tiny": {"mfm": {"options": {"preset": "tiny"}}},
    "+mfm small": {"mfm": {"options": {"preset": "small"}}},
    "+mfm base": {"mfm": {"options": {"preset": "base"}}},
}


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ensure_data(workdir: Path, size: int) -> Path:
    """A small synthetic benchmark (generated once, then reused)."""
    from harness.data.synthetic import SynthParams, generate

    root = workdir / f"synthetic-{size}"
    if not (root / "manifest.json").is_file():
        params = SynthParams(width=2 * size, height=size,
                             splits={"source": {"train": 16}, "target": {"train": 16, "val": 2}})
        generate(params, root)
    return root


def run_config(arch: str, variant: str, data_root: Path, size: int, batch: int, out: Path):
    from harness.engine.resolve import load_config

    overrides = [f"data.{p}.root={data_root}" for p in ("source", "target", "val")]
    overrides += [f"model.arch={arch}", f"model.backbone={ARCHS[arch]}", "method.host=dacs",
                  f"data.crop=[{size},{size}]", f"data.batch_size={batch}", "threads=1",
                  "device=cpu", f"output={out}", "schedule.iterations=100000", "schedule.warmup=10"]
    if arch == "daformer":
        overrides.append("model.options.embed_dim=64")  # the CPU-scale DAFormer head
    aux = VARIANTS[variant]
    return load_config(None, overrides, extra={"method": {"aux": aux}} if aux else None)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process: warm-up steps, then timed engine steps."""
    import torch

    from harness.engine.training import Trainer
    from harness.env import offline

    offline()
    torch.set_num_threads(1)
    cfg = run_config(args.arch, args.variant, Path(args.data_root), args.size, args.batch,
                     Path(args.workdir) / "runs" / f"{args.arch}-{args.variant.replace(' ', '_')}")
    trainer = Trainer(cfg, progress=False)
    trainer.model.train()
    batches = preload(trainer, args.warmup + args.steps, args.batch)
    base = rss_mb()
    timing, sums = time_steps(trainer, batches, args.warmup)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "arch": args.arch, "backbone": ARCHS[args.arch], "variant": args.variant, **timing,
        "peak_rss_mb": peak, "rss_before_steps_mb": base,
        "model_params": sum(p.numel() for p in trainer.model.parameters()),
        "aux_params": sum(p.numel() for p in trainer.aux.parameters()),
        "losses": sorted(sums),
    }


def run_one(args: argparse.Namespace, arch: str, variant: str, data_root: Path) -> dict[str, Any]:
    return in_child(__file__, ["--arch", arch, "--variant", variant, "--data-root", str(data_root),
                               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
                               "--warmup", str(args.warmup), "--workdir", str(args.workdir)], f"{arch} {variant}")


def summarise(results: list[dict[str, Any]], archs: list[str], variants: list[str]) -> list[dict[str, Any]]:
    of = partial(values, results)  # of(arch, variant, key): that key of each repeat
    rows = []
    for arch in archs:
        base_t = statistics.median(of(arch, "dacs", "step_time"))
        base_c = statistics.median(of(arch, "dacs", "step_cpu_time"))
        base_m = statistics.median(of(arch, "dacs", "peak_rss_mb"))
        for v in variants:
            t, c, m = of(arch, v, "step_time"), of(arch, v, "step_cpu_time"), of(arch, v, "peak_rss_mb")
            aux = of(arch, v, "aux_params")
            rows.append({
                "arch": arch, "backbone": ARCHS[arch], "variant": v, "repeats": len(t),
                "aux_params_m": aux[0] / 1e6, "model_params_m": of(arch, v, "model_params")[0] / 1e6,
                **ms("step_ms", t), "step_ratio": statistics.median(t) / base_t,
                **ms("cpu_ms", c), "cpu_ratio": statistics.median(c) / base_c,
                "peak_rss_mb": statistics.median(m), "peak_ratio": statistics.median(m) / base_m,
                "peak_extra_mb": statistics.median(m) - base_m,
            })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| architecture | variant | aux params (M) | step CPU time (ms), median [min-max] | x dacs "
             "| step wall time (ms), median [min-max] | x dacs | peak RSS (MiB) | x dacs | extra (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            first_cells(r) + f"{cell(r, 'cpu_ms')} | {r['cpu_ratio']:.2f} | {cell(r, 'step_ms')} | "
            f"{r['step_ratio']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_ratio']:.2f} | {r['peak_extra_mb']:+.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, steps=8, warmup=2, repeats=3)
    p.add_argument("--size", type=int, default=128, help="square training crop (pixels)")
    p.add_argument("--batch", type=int, default=2, help="source and target batch size")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-aux"))
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_aux.json")
    p.add_argument("--data-root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.size % 32:
        p.error(f"--size {args.size}: must be a multiple of 32 (the default MIC block and MFM mask unit)")
    variants = ["dacs"] + [v for v in args.variants if v != "dacs"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    data_root = ensure_data(args.workdir, args.size)
    t_start = time.perf_counter()
    results = measure_all(
        args.repeats, args.archs, variants, lambda arch, v: run_one(args, arch, v, data_root),
        lambda v, r: (f"{v:18s} {1000 * r['step_cpu_time']:7.0f} ms CPU {1000 * r['step_time']:7.0f} ms wall "
                      f"{r['peak_rss_mb']:6.0f} MiB"))
    rows = summarise(results, args.archs, variants)
    settings = {"size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                "repeats": args.repeats, "threads": 1, "device": "cpu"}
    report(args.out, "bench_aux.py", argv, settings, t_start, rows, results, markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""MFM's extra cost per training step against MIC's, at the `cpu` scale (issue 17: "make MFM's extra cost
per step at most that of MIC"), and where MFM's time goes.

Every variant is a run config of studies/configs/ at `--scale cpu` (the same overlay `udabench train
... --scale cpu` applies: 64x128 crops of the synthetic benchmark, batch 2+2, one torch thread), with
`method.aux` set as the studies set it (studies/aux_tasks.yaml for MIC, daformer_mfm.yaml for MFM):

    dacs                  the host alone
    +mic                  mim variant mic, ratio 0.7, block 32
    +mfm                  mfm base preset, ratio 0.4, image target (the default: its own encoder pass)
    +mfm mixed            image mixed: reuses the host's encoder pass of the mixed image
    +mfm mixed no-reuse   image mixed, the task's `reuses` cleared: encodes the mixed image again
    +mfm tiny mixed       the tiny Rebuilder (1 block x 128) on the reused pass
    +mfm tiny             the tiny Rebuilder on its own target pass
    +mfm small mixed      the small Rebuilder (2 blocks x 256: the width of pvt_v2_b0's deepest stage, as
                          the paper's 512 is MiT-B5's) on the reused pass
    +mfm small            the small Rebuilder on its own target pass

So `+mfm mixed no-reuse` - `+mfm mixed` is the encoder pass saved, `+mfm mixed` - `+mfm tiny mixed` the
base Rebuilder's share, and `+mfm tiny mixed` - `dacs` what is left (the extra decode and a tiny
Rebuilder). Each (repeat, architecture, variant) is a fresh process through the real engine
(`Trainer.step`: host step, task losses, backward, optimiser step, EMA update) on batches loaded
before the clock starts; repeats are interleaved (the variant order rotates per repeat) so load
drifting on the shared machine hits every variant alike. Reported: the median over repeats of each
process's median step, in CPU time of the single-threaded process (which other load does not
inflate) and in wall time (which it does), with the 1-minute load average before and after each
process; beside it the optimiser step alone (AdamW over the model and the tasks' parts: the part of a
task's cost that grows with its parameter count, whatever the image size).

    .venv/bin/python benchmarks/bench_aux_step.py --steps 20 --warmup 3 --repeats 3

prints a Markdown table and writes JSON (default reports/bench_aux_step.json, atomically; its
`markdown` entry is the table, the shape benchmarks/run_all.py renders). The child processes, the timed
steps and the report are benchmarks/_measure.py's (shared with bench_aux.py).
"""

from __future__ import annotations

import argparse
import json
import os
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

CONFIGS = {"daformer": "studies/configs/daformer.yaml", "deeplabv2": "studies/configs/deeplabv2.yaml"}
MIC = {"mim": {"weight": 1.0, "options": {"variant": "mic", "mask_ratio": 0.7, "block": 32}}}


def _mfm(**options: Any) -> dict[str, Any]:
    return {"mfm": {"weight": 1.0, "options": {"mask_ratio": 0.4, "preset": "base", **options}}}


# variant -> (method.aux, clear the tasks' `reuses` after building)
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "dacs": ({}, False),
    "+mic": (MIC, False),
    "+mfm": (_mfm(), False),
    "+mfm mixed": (_mfm(image="mixed"), False),
    "+mfm mixed no-reuse": (_mfm(image="mixed"), True),
    "+mfm tiny mixed": (_mfm(image="mixed", preset="tiny"), False),
    "+mfm tiny": (_mfm(preset="tiny"), False),
    "+mfm small mixed": (_mfm(image="mixed", preset="small"), False),
    "+mfm small": (_mfm(preset="small"), False),
}


def run_config(arch: str, variant: str, out: Path):
    from harness.engine.resolve import load_config
    from harness.scales import scale_overlay

    aux, _ = VARIANTS[variant]
    extra = scale_overlay("cpu", arch)
    extra["method"] = {**extra.get("method", {}), "aux": aux}
    return load_config(ROOT / CONFIGS[arch], [f"output={out}", "device=cpu"], extra=extra)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process: warm-up steps, then timed engine steps."""
    import torch

    from harness.engine.training import Trainer
    from harness.env import offline

    offline()
    os.chdir(ROOT)  # the configs' dataset roots are relative to the repository
    cfg = run_config(args.arch, args.variant, Path(args.workdir) / "runs" / args.arch)
    trainer = Trainer(cfg, progress=False)
    if VARIANTS[args.variant][1]:
        for task in trainer.aux.values():
            task.reuses = frozenset()
    trainer.model.train()
    n, b = args.warmup + args.steps, cfg.data.batch_size
    batches = preload(trainer, n, b)
    encodes, opt = [], {"cpu": [], "wall": []}
    trainer.model.encoder.register_forward_hook(lambda *_: encodes.append(1))  # the student's encoder
    clock: dict[str, float] = {}  # the optimiser step alone (AdamW over the model and the tasks' parts)
    trainer.optimizer.register_step_pre_hook(
        lambda *_: clock.update(wall=time.perf_counter(), cpu=time.process_time()))
    trainer.optimizer.register_step_post_hook(
        lambda *_: (opt["wall"].append(time.perf_counter() - clock["wall"]),
                    opt["cpu"].append(time.process_time() - clock["cpu"])))
    timing, sums = time_steps(trainer, batches, args.warmup)
    return {
        "arch": args.arch, "backbone": cfg.model.backbone, "variant": args.variant,
        "threads": torch.get_num_threads(), "crop": list(cfg.data.crop), "batch": b, **timing,
        "encoder_passes_per_step": len(encodes) / n,
        "optimizer_cpu_time": statistics.median(opt["cpu"][args.warmup:]),
        "optimizer_time": statistics.median(opt["wall"][args.warmup:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "aux_params": sum(p.numel() for p in trainer.aux.parameters()),
        "losses": sorted(sums),
    }


def run_one(args: argparse.Namespace, arch: str, variant: str) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    result = in_child(__file__, ["--arch", arch, "--variant", variant, "--steps", str(args.steps),
                                 "--warmup", str(args.warmup), "--workdir", str(args.workdir)], f"{arch} {variant}")
    result.update(load_before=load_before, load_after=os.getloadavg()[0])
    return result


def summarise(results: list[dict[str, Any]], archs: list[str], variants: list[str]) -> list[dict[str, Any]]:
    of = partial(values, results)  # of(arch, variant, key): that key of each repeat
    rows = []
    for arch in archs:
        base_c = statistics.median(of(arch, "dacs", "step_cpu_time"))
        base_t = statistics.median(of(arch, "dacs", "step_time"))
        mic_c = statistics.median(of(arch, "+mic", "step_cpu_time")) - base_c if "+mic" in variants else None
        for v in variants:
            c, t = of(arch, v, "step_cpu_time"), of(arch, v, "step_time")
            extra = statistics.median(c) - base_c
            rows.append({
                "arch": arch, "backbone": of(arch, v, "backbone")[0], "variant": v, "repeats": len(c),
                "aux_params_m": of(arch, v, "aux_params")[0] / 1e6,
                "encoder_passes": of(arch, v, "encoder_passes_per_step")[0],
                **ms("cpu_ms", c), "extra_cpu_ms": 1000 * extra,
                "optimizer_cpu_ms": 1000 * statistics.median(of(arch, v, "optimizer_cpu_time")),
                "extra_vs_mic": extra / mic_c if mic_c and v not in ("dacs", "+mic") else None,
                "wall_ms": 1000 * statistics.median(t), "wall_ratio": statistics.median(t) / base_t,
                "peak_rss_mb": statistics.median(of(arch, v, "peak_rss_mb")),
                "load_min": min(of(arch, v, "load_before") + of(arch, v, "load_after")),
                "load_max": max(of(arch, v, "load_before") + of(arch, v, "load_after")),
            })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| architecture | variant | aux params (M) | student encoder passes / step | step CPU time (ms), "
             "median [min-max] | extra over dacs (ms) | extra / MIC's extra | optimiser step CPU (ms) "
             "| step wall time (ms) | x dacs (wall) | peak RSS (MiB) | load (1 min) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r["extra_vs_mic"] is None else f"{r['extra_vs_mic']:.2f}"
        lines.append(
            first_cells(r) + f"{r['encoder_passes']:g} | {cell(r, 'cpu_ms')} | {r['extra_cpu_ms']:+.0f} | "
            f"{ratio} | {r['optimizer_cpu_ms']:.0f} | {r['wall_ms']:.0f} | {r['wall_ratio']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['load_min']:.1f}-{r['load_max']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, steps=20, warmup=3, repeats=3)
    p.add_argument("--archs", nargs="+", default=["daformer"], choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/udabench-bench-aux-step"))
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_aux_step.json")
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--steps and --repeats must be at least 1, --warmup at least 0")
    variants = ["dacs", "+mic"] + [v for v in args.variants if v not in ("dacs", "+mic")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    results = measure_all(
        args.repeats, args.archs, variants, lambda arch, v: run_one(args, arch, v),
        lambda v, r: (f"{v:20s} {1000 * r['step_cpu_time']:6.0f} ms CPU {1000 * r['step_time']:6.0f} ms wall, "
                      f"load {r['load_before']:.1f}"), rotate=True)
    rows = summarise(results, args.archs, variants)
    settings = {"scale": "cpu", "configs": {a: CONFIGS[a] for a in args.archs}, "steps": args.steps,
                "warmup": args.warmup, "repeats": args.repeats, "device": "cpu"}
    report(args.out, "bench_aux_step.py", argv, settings, t_start, rows, results, markdown(rows),
           load_avg_1m_at_start=load_start[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

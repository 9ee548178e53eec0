"""What benchmarks/bench_aux.py and bench_aux_step.py share: every (repeat, architecture, variant)
measured in a fresh child process (the script again, with `--worker`, one OpenMP thread), repeats
interleaved, timed `Trainer.step`s on batches loaded before the clock starts, the table cells and the
JSON report written atomically. Each script keeps its own run configs, what its worker records beyond
the step times, its rows and its table. benchmarks/bench_hardware.py times its steps with `preload` and
`time_steps` too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str, steps: int, warmup: int, repeats: int) -> argparse.ArgumentParser:
    """The script's parser (its description: the first paragraph of `doc`) with --steps, --warmup,
    --repeats and the hidden flags that make the script a worker."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=steps, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=repeats, help="fresh processes per (architecture, variant)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------------------------------
# in the worker process

def preload(trainer, n: int, batch: int) -> list[tuple[dict, dict]]:
    """`n` (source, target) batches of the trainer's streams, collated before the clock starts."""
    from torch.utils.data import default_collate

    return [(default_collate([trainer.source_stream[k * batch + i] for i in range(batch)]),
             default_collate([trainer.target_stream[k * batch + i] for i in range(batch)])) for k in range(n)]


def time_steps(trainer, batches: list[tuple[dict, dict]], warmup: int) -> tuple[dict[str, Any], dict[str, float]]:
    """`Trainer.step` on each batch; the wall and CPU times of the steps after the first `warmup` (each
    and their median) and the summed losses (their names say which losses a step computed)."""
    sums: dict[str, float] = defaultdict(float)
    times, cpu_times = [], []
    for k, (src, tgt) in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.step(src, tgt, sums)
        trainer.iteration += 1
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    timing = {"step_times": times, "step_time": statistics.median(times),
              "step_cpu_times": cpu_times, "step_cpu_time": statistics.median(cpu_times)}
    return timing, sums


# --------------------------------------------------------------------------------------------------
# in the parent process

def in_child(script: str, flags: list[str], what: str) -> dict[str, Any]:
    """Run `script --worker *flags` in a fresh process (one OpenMP thread, offline); the JSON of its last
    line of output. A failing worker raises with `what` and the end of its stderr."""
    cmd = [sys.executable, script, "--worker", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_all(repeats: int, archs: list[str], variants: list[str], run: Callable[[str, str], dict[str, Any]],
                progress: Callable[[str, dict[str, Any]], str], rotate: bool = False) -> list[dict[str, Any]]:
    """`run(arch, variant)` for every repeat, architecture and variant, repeats outermost (so drift on the
    shared machine hits every variant alike); with `rotate` the variant order turns by one each repeat
    (no variant keeps a fixed slot). Each result gets its `repeat`; `progress(variant, result)` is the
    rest of its line on stderr."""
    results = []
    for rep in range(repeats):
        turn = rep % len(variants) if rotate else 0
        order = variants[turn:] + variants[:turn]
        for arch in archs:
            for v in order:
                r = run(arch, v)
                r["repeat"] = rep
                results.append(r)
                print(f"[{rep + 1}/{repeats}] {arch:9s} {progress(v, r)}", file=sys.stderr)
    return results


def values(results: list[dict[str, Any]], arch: str, variant: str, key: str) -> list[Any]:
    """`key` of every result of (`arch`, `variant`), in the order measured."""
    return [r[key] for r in results if r["arch"] == arch and r["variant"] == variant]


def ms(name: str, seconds: list[float]) -> dict[str, float]:
    """`name`, `name_min`, `name_max`: the median, least and largest of `seconds`, in milliseconds."""
    return {name: 1000 * statistics.median(seconds), f"{name}_min": 1000 * min(seconds),
            f"{name}_max": 1000 * max(seconds)}


def first_cells(row: dict[str, Any]) -> str:
    """The columns every table of these scripts starts with: architecture, variant, aux params (M)."""
    return f"| {row['arch']}/{row['backbone']} | {row['variant']} | {row['aux_params_m']:.2f} | "


def cell(row: dict[str, Any], name: str) -> str:
    """A table cell `median [min-max]` of the milliseconds `ms(name, ...)` put in `row`."""
    return f"{row[name]:.0f} [{row[f'{name}_min']:.0f}-{row[f'{name}_max']:.0f}]"


def report(out: Path, script: str, argv: list[str] | None, settings: dict[str, Any], t_start: float,
           rows: list[dict[str, Any]], results: list[dict[str, Any]], table: str, **environment: Any) -> None:
    """Print `table`; write the JSON report (the command, settings, environment, wall time, rows, every
    run and the table as `markdown`, the entry benchmarks/run_all.py renders) to `out`, atomically.
    `environment` adds entries (e.g. the load average at the start) before the load at the end."""
    import torch

    from harness.data.io import atomic_write_text

    print(table)
    doc = {
        "command": f"benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": settings,
        "environment": {"python": sys.version.split()[0], "torch": torch.__version__, "cpus": os.cpu_count(),
                        **environment, "load_avg_1m_at_end": os.getloadavg()[0]},
        "wall_time_s": time.perf_counter() - t_start,
        "rows": rows, "runs": results, "markdown": table,
    }
    atomic_write_text(out, json.dumps(doc, indent=1))
    print(f"\nwrote {out}", file=sys.stderr)

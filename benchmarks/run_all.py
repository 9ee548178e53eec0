"""Run every benchmark and write reports/benchmarks.md and reports/benchmarks.json.

    .venv/bin/python benchmarks/run_all.py                 # all, with the modest settings below
    .venv/bin/python benchmarks/run_all.py --only hardware inference
    .venv/bin/python benchmarks/run_all.py --set aux=--repeats=3 --set overhead=--trials=6

Each benchmark is its own script in benchmarks/ (also runnable alone, with its own --help); this one
runs each in a fresh process with the settings of BENCHMARKS (extra flags per benchmark with --set
NAME=FLAG, repeatable), collects the JSON each writes, and writes one page and one JSON file (both
replaced atomically) with every number, the exact command that measured it, its wall time and the
machine's load average before and after. A failing benchmark is reported on the page and makes the
exit code 1; the others still run. With --only, the benchmarks not run keep their previous entries.

Settings are small on purpose: the machine has 2 cores shared with other work. Load makes wall times
noisy; where it matters the scripts also report CPU time of single-threaded work, which load does not
inflate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Benchmark:
    """One script: what it measures, its settings, and how its JSON is asked for (`--out` or `--json`)."""

    title: str
    script: str
    args: list[str] = field(default_factory=list)
    out_flag: str = "--out"


BENCHMARKS: dict[str, Benchmark] = {
    "data": Benchmark("Data: synthetic generation throughput (one core)", "bench_data.py",
                      ["--images", "60", "--repeats", "2"]),
    "aux": Benchmark("Training: step time and peak memory of each auxiliary task relative to dacs (CPU scale)",
                     "bench_aux.py", ["--steps", "4", "--warmup", "1", "--repeats", "2"]),
    "aux_step": Benchmark("Training: MFM's extra cost per step against MIC's (CPU scale, DAFormer), and where it goes",
                          "bench_aux_step.py", ["--steps", "12", "--warmup", "2", "--repeats", "3", "--archs",
                                                "daformer"]),
    "aux_flops": Benchmark("Training: FLOPs per step of dacs, +MIC and +MFM at the paper's network and crop (checked counter)",
                           "bench_aux_flops.py", ["--size", "512", "--batch", "1"]),
    "inference": Benchmark("Inference parity: host vs host + MFM trained models", "bench_inference.py",
                           ["--iterations", "4", "--repeats", "30"]),
    "overhead": Benchmark("Harness overhead: a plain loop over train() vs `udabench study run`; 2 concurrent trials",
                          "bench_overhead.py", ["--trials", "4", "--iterations", "800", "--repeats", "1"]),
    "hardware": Benchmark("Training FLOP/s (checked FLOP counter) beside the float32 matmul rate", "bench_hardware.py",
                          ["--mm-size", "2048", "--steps", "4"]),
    "report": Benchmark("Report: time to build every report from 1,000 runs in MLflow", "bench_report.py",
                        ["--runs", "1000", "--studies", "4"], out_flag="--json"),
}


def command(name: str, extra: list[str], out: Path) -> list[str]:
    b = BENCHMARKS[name]
    return [sys.executable, str(HERE / b.script), *b.args, *extra, b.out_flag, str(out)]


def shown(cmd: list[str], out: Path) -> str:
    """The command as a user would type it from the repository root (without the scratch --out)."""
    args = cmd[2:]
    if str(out) in args:
        i = args.index(str(out))
        args = args[:i - 1] + args[i + 1:]
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in
                                           [str(Path(cmd[1]).relative_to(ROOT)), *args])


def run_one(name: str, extra: list[str], scratch: Path) -> dict[str, Any]:
    out = scratch / f"{name}.json"
    cmd = command(name, extra, out)
    log = scratch / f"{name}.log"
    entry: dict[str, Any] = {"title": BENCHMARKS[name].title, "command": shown(cmd, out),
                             "load_avg_before": os.getloadavg()}
    print(f"== {name}: {entry['command']}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    entry.update(wall_s=round(time.perf_counter() - t0, 1), load_avg_after=os.getloadavg(),
                 exit_code=proc.returncode, ok=proc.returncode == 0 and out.is_file())
    if entry["ok"]:
        entry["result"] = json.loads(out.read_text())
    else:
        entry["error"] = log.read_text()[-4000:]
    print(f"   {'ok' if entry['ok'] else 'FAILED'} in {entry['wall_s']} s", file=sys.stderr, flush=True)
    return entry


# --------------------------------------------------------------------------------------------------
# the page: each script's own Markdown table where it writes one, a short table otherwise

def _md_data(r: dict[str, Any]) -> str:
    w, h = r["size"]
    lines = [f"{r['images']} images per domain at {w}x{h}, one core, median of {r['repeats']}; images/s.", "",
             "| domain | generate (CPU time) | generate (wall) | render only (CPU) | read + crop (CPU) |",
             "|---|---:|---:|---:|---:|"]
    for d, m in r["median_images_per_s"].items():
        lines.append(f"| {d} | {m['generate_cpu']:.0f} | {m['generate_wall']:.0f} | {m['render_cpu']:.0f} | "
                     f"{m['read_cpu']:.0f} |")
    lines.append(f"| all (equal mix) | {r['all_generate_cpu']:.0f} | {r['all_generate_wall']:.0f} | | |")
    return "\n".join(lines)


def _md_report(r: dict[str, Any]) -> str:
    return (f"`udabench report` of {r['studies']} studies holding {r['runs']} runs ({r['evals_per_run']} "
            f"evaluations each) in one sqlite store: {r['report_s_median']:.1f} s (median of "
            f"{len(r['report_s'])}; every run: {', '.join(f'{t:.1f}' for t in r['report_s'])} s)"
            + (f"; filling the store took {r['fill_s']:.0f} s." if r.get("fill_s") else "."))


def section(name: str, e: dict[str, Any]) -> str:
    head = [f"## {e['title']}", "", f"Command: `{e['command']}`  ", f"Wall time {e['wall_s']} s; load average "
            f"(1 min) {e['load_avg_before'][0]:.1f} before, {e['load_avg_after'][0]:.1f} after "
            f"({os.cpu_count()} CPUs).", ""]
    if not e["ok"]:
        return "\n".join([*head, f"**Failed** (exit code {e['exit_code']}):", "", "```", e["error"][-2000:],
                          "```", ""])
    r = e["result"]
    body = {"data": _md_data, "report": _md_report}.get(name, lambda r: r["markdown"])(r)
    return "\n".join([*head, body, ""])


def headline(name: str, r: dict[str, Any]) -> str:
    """One line per benchmark for the summary at the top of the page."""
    if name == "data":
        return f"synthetic data: {r['all_generate_cpu']:.0f} images/s per core (CPU time, {r['size'][0]}x{r['size'][1]})"
    if name == "aux":
        worst = max((x for x in r["rows"] if x["variant"] != "dacs"), key=lambda x: x["cpu_ratio"])
        return (f"auxiliary tasks: step CPU time x{min(x['cpu_ratio'] for x in r['rows'] if x['variant'] != 'dacs'):.2f}"
                f"-x{worst['cpu_ratio']:.2f} of dacs (largest: {worst['variant']} on {worst['arch']})")
    if name == "inference":
        return "inference: " + "; ".join(
            f"{x['arch']} +MFM/dacs params {'equal' if x['same_params'] else 'DIFFER'}, FLOPs "
            f"{'equal' if x['same_flops'] else 'DIFFER'}, latency x{x['latency_ratio']:.2f}" for x in r["rows"])
    if name == "overhead":
        s = r["summary"]
        return (f"harness overhead: study run / loop = x{s['overhead_ratio']:.2f} ({s['overhead_s']:+.0f} s for "
                f"{r['settings']['trials']} trials); 2 concurrent trials: speed-up x{s['concurrency_speedup']:.2f} end to end, "
                f"x{s['trial_phase_speedup']:.2f} over the trial phase")
    if name == "hardware":
        return "hardware: " + "; ".join(f"{x['arch']} step {x['flops_per_step'] / 1e9:.2f} GFLOP at "
                                        f"{x['gflops_cpu']:.0f} GFLOP/s of CPU time" for x in r["rows"])
    if name == "report":
        return f"report: {r['report_s_median']:.1f} s for {r['runs']} runs"
    if name == "aux_step":
        return "MFM vs MIC at the cpu scale: extra step CPU time / MIC's extra: " + ", ".join(
            f"{x['variant']} x{x['extra_vs_mic']:.2f}" for x in r["rows"] if x.get("extra_vs_mic") is not None)
    if name == "aux_flops":
        base = next(x["gflop"] for x in r["rows"] if x["variant"] == "dacs")
        mic = next(x["gflop"] for x in r["rows"] if x["variant"] == "+mic") - base
        return (f"MFM vs MIC at the paper's size ({r['size']}x{r['size']}, FLOPs): extra / MIC's extra: " + ", ".join(
            f"{x['variant']} x{(x['gflop'] - base) / mic:.2f}" for x in r["rows"] if x["variant"].startswith("+mfm")))
    return name


def page(entries: dict[str, dict[str, Any]], command_line: str) -> str:
    lines = ["# Benchmarks", "",
             f"Written by `{command_line}` on {time.strftime('%Y-%m-%d %H:%M %Z')} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work; "
             "wall times include that load, CPU times do not). Every number below comes from the command "
             "shown with it; how each is measured is in its script's docstring.", "",
             "## Summary", ""]
    for name, e in entries.items():
        lines.append(f"- {headline(name, e['result']) if e['ok'] else name + ': FAILED'}")
    lines.append("")
    lines += [section(name, e) for name, e in entries.items()]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="do not run these")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=FLAG",
                   help="an extra flag for one benchmark, e.g. aux=--repeats=3 (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "reports", help="folder for benchmarks.md/.json")
    p.add_argument("--page-only", action="store_true",
                   help="rewrite benchmarks.md from benchmarks.json (its command and time) without running anything")
    args = p.parse_args(argv)
    if args.page_only:
        stored = json.loads((args.out / "benchmarks.json").read_text())
        text = page(stored["benchmarks"], stored["command"])
        when = stored["written"].replace("T", " ")[:16] + " UTC" + stored["written"][19:]
        text = re.sub(r"(Written by `[^`]*` on )[^(]*\(", lambda m: f"{m.group(1)}{when} (", text, count=1)
        write_atomic(args.out / "benchmarks.md", text + "\n")
        return 0

    extra: dict[str, list[str]] = {n: [] for n in BENCHMARKS}
    for item in args.extra:
        name, sep, flag = item.partition("=")
        if not sep or name not in BENCHMARKS or not flag.startswith("--"):
            p.error(f"--set {item!r}: expected NAME=--flag[=value] with NAME one of {', '.join(BENCHMARKS)}")
        extra[name].append(flag)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    json_path, md_path = args.out / "benchmarks.json", args.out / "benchmarks.md"
    entries: dict[str, dict[str, Any]] = {}
    if args.only and json_path.is_file():  # keep what was not re-run
        entries = json.loads(json_path.read_text()).get("benchmarks", {})
    command_line = ".venv/bin/python benchmarks/run_all.py" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(prefix="udabench-benchmarks-") as scratch:
        for name in names:
            entries[name] = run_one(name, extra[name], Path(scratch))
    entries = {n: entries[n] for n in BENCHMARKS if n in entries}
    report = {"command": command_line, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": sys.version.split()[0]},
              "benchmarks": entries}
    write_atomic(json_path, json.dumps(report, indent=1) + "\n")
    write_atomic(md_path, page(entries, command_line) + "\n")
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    return 0 if all(e["ok"] for e in entries.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

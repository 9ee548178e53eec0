"""`udabench demo`: the whole pipeline at demo scale, end to end, on this machine.

1. data:   the synthetic benchmark (`dvc repro synth`: generated once, then cached and skipped);
2. look:   a PNG grid of source and target samples with their labels (`udabench data show`);
3. study:  studies/demo.yaml at the `demo` scale, every trial a Ray Tune trial and an MLflow run;
4. report: tables, figures and a page from those MLflow runs (`udabench report`).

Its samples and report go to `runs/demo/` (OUT; git-ignored, like mlruns/ and ray_results/), never into
the committed `reports/`, whose `metrics.json` is the DVC pipeline's: a first `make demo` leaves both
`git status` and `dvc status` as they were (`dvc repro synth` rebuilds the data DVC already records).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = "runs/demo"  # git-ignored (.gitignore: /runs/); tests/test_cli.py checks it stays so


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the demo-scale pipeline end to end (data, study, MLflow, report)",
        description="Generate the synthetic benchmark (via DVC), run studies/demo.yaml at the demo "
                    "scale under Ray Tune with MLflow tracking, and build its report. Re-running "
                    "skips finished trials and up-to-date data. The samples and the report go to "
                    f"{OUT}/ (git-ignored): the committed reports/ and its DVC metrics stay as they are.")
    p.add_argument("--study", default="studies/demo.yaml", help="study file (default: %(default)s)")
    p.add_argument("--scale", default="demo", help="scale preset (default: %(default)s)")
    p.add_argument("--out", default=OUT, help="folder for the samples and the report (default: "
                                             "%(default)s, git-ignored)")
    p.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _data() -> None:
    from harness.cli import main

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    dvc = shutil.which("dvc", path=env["PATH"])
    if dvc and Path(".dvc").is_dir() and Path("dvc.yaml").is_file():
        subprocess.run([dvc, "repro", "synth"], check=True, env=env)
    elif not Path("datasets/synthetic/manifest.json").is_file():
        if main(["data", "synth", "--quiet"]) != 0:
            raise SystemExit(1)


def run(args: argparse.Namespace) -> int:
    from harness.cli import main
    from harness.cli.report import check_out

    check_out(Path(args.out))  # before minutes of work
    t0 = _step("1/4 data: the synthetic benchmark (dvc repro synth)")
    _data()
    print(f"   ({time.perf_counter() - t0:.0f} s)")
    t = _step("2/4 look: samples of every domain")
    out = Path(args.out)
    samples = out / "synthetic_samples.png"
    rc = main(["data", "show", "--out", str(samples)])
    if rc != 0:
        return rc
    t = _step(f"3/4 study: {args.study} at scale '{args.scale}' (Ray Tune + MLflow)")
    rc = main(["study", "run", args.study, "--scale", args.scale])
    if rc != 0:
        return rc
    print(f"   ({time.perf_counter() - t:.0f} s)")
    name = Path(args.study).stem
    t = _step("4/4 report")
    rc = main(["report", args.study, "--scale", f"{name}={args.scale}", "--out", str(out)])
    if rc != 0:
        return rc
    print(f"\nDone in {time.perf_counter() - t0:.0f} s.\n"
          f"  report:  {out / name / 'README.md'}\n"
          f"  samples: {samples}\n"
          f"  runs:    `udabench study status {args.study} --scale {args.scale}`; "
          f"MLflow UI: `mlflow ui --backend-store-uri sqlite:///{Path('mlruns/mlflow.db').resolve()}`")
    return 0

"""`udabench demo`: the whole pipeline at demo scale, end to end, on this machine.

1. data:   the synthetic benchmark (`dvc repro synth`: generated once, then cached and skipped);
2. look:   a PNG grid of source and target samples with their labels (`udabench data show`);
3. study:  studies/demo.yaml at the `demo` scale, every trial a Ray Tune trial and an MLflow run;
4. report: tables, figures and a page from those MLflow runs (`udabench report`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the demo-scale pipeline end to end (data, study, MLflow, report)",
        description="Generate the synthetic benchmark (via DVC), run studies/demo.yaml at the demo "
                    "scale under Ray Tune with MLflow tracking, and build its report. Re-running "
                    "skips finished trials and up-to-date data.")
    p.add_argument("--study", default="studies/demo.yaml", help="study file (default: %(default)s)")
    p.add_argument("--scale", default="demo", help="scale preset (default: %(default)s)")
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

    t0 = _step("1/4 data: the synthetic benchmark (dvc repro synth)")
    _data()
    print(f"   ({time.perf_counter() - t0:.0f} s)")
    t = _step("2/4 look: samples of every domain")
    main(["data", "show", "--out", "reports/synthetic_samples.png"])
    t = _step(f"3/4 study: {args.study} at scale '{args.scale}' (Ray Tune + MLflow)")
    rc = main(["study", "run", args.study, "--scale", args.scale])
    if rc != 0:
        return rc
    print(f"   ({time.perf_counter() - t:.0f} s)")
    name = Path(args.study).stem
    t = _step("4/4 report")
    rc = main(["report", args.study, "--scale", f"{name}={args.scale}"])
    if rc != 0:
        return rc
    print(f"\nDone in {time.perf_counter() - t0:.0f} s.\n"
          f"  report:  reports/{name}/README.md\n"
          f"  samples: reports/synthetic_samples.png\n"
          f"  runs:    `udabench study status {args.study} --scale {args.scale}`; "
          f"MLflow UI: `mlflow ui --backend-store-uri sqlite:///{Path('mlruns/mlflow.db').resolve()}`")
    return 0

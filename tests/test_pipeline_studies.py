"""The project's own DVC pipeline (dvc.yaml, params.yaml, studies/) end to end, in a temporary git
repository: synthetic data -> every study at smoke scale (`run: {cover: true}`: a few trials covering
every axis value) -> `udabench report`. A second `dvc repro` does nothing; changing one study's params
re-runs that study and the report only.

Marked slow: about 40 real smoke trials under Ray Tune (several minutes on two cores). The same DVC
mechanics with stand-in study stages run fast in tests/test_pipeline.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"source": {"train": 16}, "target": {"train": 16, "val": 8},
        "target-fog": {"train": 4, "val": 4}, "target-night": {"train": 4, "val": 4}}


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's store: <repo>/mlruns
    res = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=3600)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout[-5000:]}\n{res.stderr[-5000:]}"
    return res.stdout


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_project_pipeline_at_smoke_scale(tmp_path):
    repo = tmp_path / "udabench"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    for folder in ("studies", "harness", "methods"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synth"].update(width=128, height=64, splits=TINY)
    for group in params["studies"].values():
        group["scale"] = "smoke"
        group["run"] = {"force": True, "cover": True}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/mlruns/\n/ray_results/\n*.tmp\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")

    first = _dvc(repo, "repro")
    studies = set(params["studies"])
    assert _ran(first) == {"synth", "report", *(f"study@{s}" for s in studies)}
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) == studies
    assert all(m["scale"] == "smoke" and m["runs"] >= 1 for m in metrics.values())
    for s in studies:
        assert (repo / "reports" / s / "README.md").is_file()
        assert any((repo / "reports" / s / "figures").glob("*.png"))
        status = (repo / "results" / f"{s}.csv").read_text().splitlines()
        assert len(status) - 1 >= metrics[s]["runs"]  # every reported run is a trial of the study

    assert _ran(_dvc(repo, "repro")) == set()  # second repro: nothing to do

    # one study's params change: that study runs again (no --force: its finished trials are skipped,
    # its trial table is unchanged, so the report is up to date and DVC leaves it alone) ...
    params["studies"]["rebuilder"]["run"]["force"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_dvc(repo, "repro")) == {"study@rebuilder"}
    # ... and with new trials (the full grid instead of the cover), that study and the report run
    params["studies"]["rebuilder"]["run"]["cover"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_dvc(repo, "repro")) == {"study@rebuilder", "report"}
    assert json.loads((repo / "reports" / "metrics.json").read_text())["rebuilder"]["runs"] == 9
    images = json.loads(_dvc(repo, "plots", "show", "--json"))["data"]  # the figures as DVC plots
    assert "reports/rebuilder/figures/miou_vs_preset.png" in images
    assert all(v[0]["type"] == "image" for v in images.values())
    assert "reports/metrics.json" in _dvc(repo, "metrics", "show")

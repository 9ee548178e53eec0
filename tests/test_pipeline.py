"""The DVC mechanics of the report pipeline, with real `dvc` in a temporary git repository.

Two study stages (each logs runs into a real sqlite MLflow store through the MLflow client, in the
tracking schema, and writes a summary file) feed one `udabench report` stage that declares the study
pages as outputs and `reports/metrics.json` as DVC metrics. `dvc repro` twice: the second run does
nothing; changing one study's params re-runs only that study and the report. The same pipeline with
real `udabench study run` stages (the project's dvc.yaml) is tests/test_pipeline_studies.py.
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

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

FILL = '''\
"""A stand-in study stage: log runs of one study into the store and write its summary."""
import json, sys
from pathlib import Path
import yaml
sys.path.insert(0, {bench!r})
from bench_report import fill_store
name = sys.argv[1]
p = yaml.safe_load(open("params.yaml"))[name]
fill_store({uri!r}, n_runs=p["runs"], studies=1, evals=2, seed=p["seed"], prefix=name)
Path("results").mkdir(exist_ok=True)
Path(f"results/{{name}}.json").write_text(json.dumps({{"study": name + "_0", **p}}))
'''


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture()
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "pipe"
    repo.mkdir()
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    (repo / "fill.py").write_text(FILL.format(bench=str(ROOT / "benchmarks"), uri=uri))
    params = {"study_a": {"runs": 4, "seed": 0}, "study_b": {"runs": 4, "seed": 1},
              "report": {"figures": False}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = {}
    for s in ("study_a", "study_b"):
        stages[s] = {"cmd": f"python fill.py {s}", "deps": ["fill.py"], "params": [s],
                     "outs": [{f"results/{s}.json": {"cache": False}}]}
    stages["report"] = {
        "cmd": f"udabench report study_a_0 study_b_0 --tracking-uri {uri} --out reports --no-figures",
        "deps": ["results/study_a.json", "results/study_b.json"],
        "params": ["report"],
        "outs": [{f"reports/{s}_0": {"cache": False}} for s in ("study_a", "study_b")],
        "metrics": [{"reports/metrics.json": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (repo / ".gitignore").write_text("mlflow.db\nartifacts/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    return repo


def test_repro_twice_is_a_noop_and_one_study_reruns_alone(repo):
    first = _dvc(repo, "repro")
    assert _stages_run(first) == {"study_a", "study_b", "report"}
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"study_a_0", "study_b_0"} and metrics["study_a_0"]["runs"] == 4
    page = repo / "reports" / "study_a_0" / "README.md"
    stamp = page.stat().st_mtime_ns

    second = _dvc(repo, "repro")
    assert _stages_run(second) == set(), second
    assert page.stat().st_mtime_ns == stamp
    assert "up to date" in _dvc(repo, "status").lower()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study_b"]["runs"] = 6
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _dvc(repo, "repro")
    assert _stages_run(third) == {"study_b", "report"}, third
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["study_b_0"]["runs"] == 6  # the 4 earlier configs' runs are superseded by new ones
    shown = _dvc(repo, "metrics", "show")  # DVC reads the report's metrics file
    assert "reports/metrics.json" in shown and "study_b_0.runs" in shown.replace(" ", "")

"""`udabench report` on runs of a real smoke-scale study: `udabench study run` (Ray Tune, the training
engine, MLflow sqlite) fills the store; the report's tables must equal what MLflow holds.

Marked slow: the study (Ray start, four smoke trials, Ray shutdown) takes one to two minutes on two
shared cores. The same checks on a store filled through the MLflow client run fast in test_report.py.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
STUDY = {
    "name": "report_smoke",
    "description": "Does MFM help DACS on the synthetic benchmark? (the report test's study)",
    "config": "base.yaml",
    "axes": {"task": {"none": {},
                      "mfm": {"method.aux.mfm": {"weight": 1.0, "options": {"preset": "tiny", "mask_unit": 16}}}}},
    "grid": {"task": ["none", "mfm"], "seed": [0, 1]},
}


@pytest.fixture(scope="module")
def study(synth_root, tmp_path_factory):
    """Four real trials (host, host + MFM; seeds 0 and 1) at smoke scale in a fresh store."""
    root = tmp_path_factory.mktemp("study")
    base = {"name": "base", "method": {"host": "dacs"},
            "data": {p: {"root": str(synth_root)} for p in ("source", "target", "val")}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    (root / "report_smoke.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    res = subprocess.run([str(BIN / "udabench"), "study", "run", str(root / "report_smoke.yaml"),
                          "--scale", "smoke", "--root", str(root)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = root / "reports"
    assert main(["report", str(root / "report_smoke.yaml"), "--tracking-uri", uri, "--out", str(out)]) == 0
    return root, uri, out


def _runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("report_smoke")
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]


def test_tables_equal_the_metrics_in_mlflow(study):
    _, uri, out = study
    runs = _runs(uri)
    assert len(runs) == 4
    table = pd.read_csv(out / "report_smoke" / "tables" / "main.csv")
    assert len(table) == 2 and list(table["aux"]) == ["none", "mfm"]
    for _, row in table.iterrows():
        mine = [r for r in runs if r.data.tags["axis.task"] == row["aux"]]
        assert row["runs"] == len(mine) == 2
        for metric in ("target_miou", "iou/road", "iou/sky"):
            values = [r.data.metrics[metric] for r in mine if metric in r.data.metrics]
            values = [v for v in values if v == v]  # NaN: class absent from GT and prediction
            assert row[f"{metric}:n"] == len(values)
            if values:
                assert row[f"{metric}:mean"] == pytest.approx(statistics.mean(values), abs=1e-6)
    trials = pd.read_csv(out / "report_smoke" / "tables" / "trials.csv")
    by_id = {r.info.run_id: r for r in runs}
    for _, t in trials.iterrows():
        assert t["target_miou"] == pytest.approx(by_id[t["run_id"]].data.metrics["target_miou"], abs=1e-6)
        assert str(t["seed"]) == by_id[t["run_id"]].data.params["seed"]


def test_gain_is_the_paired_difference_with_a_t_interval(study):
    from scipy import stats

    _, uri, out = study
    runs = _runs(uri)
    final = {(r.data.tags["axis.task"], r.data.params["seed"]): r.data.metrics["target_miou"] for r in runs}
    seeds = ["0", "1"]
    res = stats.ttest_rel([final["mfm", s] for s in seeds], [final["none", s] for s in seeds])
    ci = res.confidence_interval(0.95)
    gains = pd.read_csv(out / "report_smoke" / "tables" / "gains.csv")
    row = gains.iloc[0]
    assert row["pairs"] == 2
    assert row["target_miou:gain"] == pytest.approx(statistics.mean(final["mfm", s] - final["none", s]
                                                                    for s in seeds), abs=1e-6)
    if ci.low == ci.low:  # NaN when both seeds give the same difference
        assert row["target_miou:ci_low"] == pytest.approx(ci.low, abs=1e-6)
        assert row["target_miou:ci_high"] == pytest.approx(ci.high, abs=1e-6)


def test_page_latex_and_figures(study):
    _, _, out = study
    page = (out / "report_smoke" / "README.md").read_text()
    assert page.startswith("# Study `report_smoke`") and "Does MFM help DACS" in page
    assert "from 4 finished runs" in page and "run time" in page
    for tex in (out / "report_smoke" / "tables").glob("*.tex"):
        text = tex.read_text()
        assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
        assert all(text.count(rule) == 1 for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
        assert text.isascii()
    figures = re.findall(r"\]\(figures/([^)]+\.png)\)", page)
    assert {"class_gains.png", "curves_miou.png", "curves_loss.png"} <= set(figures)
    for name in figures:
        png = out / "report_smoke" / "figures" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.with_suffix(".svg").is_file()


def test_mixed_data_hash_refused_on_real_runs(study, tmp_path, capsys):
    """A copy of the store in which one run claims other data: refused, naming that run."""
    from mlflow import MlflowClient

    root, _, _ = study
    db = tmp_path / "mlflow.db"
    shutil.copy(root / "mlruns" / "mlflow.db", db)
    uri = f"sqlite:///{db}"
    run = _runs(uri)[0]
    MlflowClient(uri).set_tag(run.info.run_id, "data_hash", "somewhere-else")
    out = tmp_path / "reports"
    assert main(["report", "report_smoke", "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data_hash = somewhere-else" in err and run.data.tags["trial_name"] in err
    assert not (out / "report_smoke").exists()

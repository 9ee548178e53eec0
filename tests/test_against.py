"""`udabench report ... --against REFERENCE`: reproduction bands, collapsed classes and environment
differences against a reference; `--export-reference`; the shipped references (references/).

Stores are real sqlite MLflow stores filled through the MLflow client in the tracking schema
(benchmarks/bench_report.py `fill_store`, deterministic for a given seed), then changed with mlflow
directly: an outlier run, a collapsed class, another torch version.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.report import against

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = "synthetic:source->synthetic:target"


def _fill(fill_store, folder: Path) -> str:
    """2 architectures x (host, contrastive, mim, mfm x 4 mask ratios) x 2 seeds, all finished."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    fill_store(uri, n_runs=28, studies=1, evals=1, prefix="ref")
    return uri


def _run_id(uri: str, trial: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ref_0")
    return client.search_runs([exp.experiment_id], f"tags.trial_id = '{trial}'")[0].info.run_id


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fill_store) -> Path:
    """A reference exported from the report of one store (its trials.csv and README provenance)."""
    tmp = tmp_path_factory.mktemp("against_ref")
    uri = _fill(fill_store, tmp)
    out = tmp / "reports"
    assert main(["report", "ref_0", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 0
    path = tmp / "ref.yaml"
    with pytest.MonkeyPatch.context() as mp:  # the synthetic store has no studies/ref_0.yaml to read
        mp.setattr(against, "_study_setup", lambda study, scale, table: (BENCHMARK, "val", "target_miou"))
        assert main(["report", "--export-reference", str(path), str(out / "ref_0")]) == 0
    return path


def _report(uri: str, out: Path, ref: Path, capsys) -> tuple[pd.DataFrame, str]:
    capsys.readouterr()
    assert main(["report", "ref_0", "--tracking-uri", uri, "--out", str(out), "--no-figures",
                 "--against", str(ref)]) == 0  # a report: exit 0 even when runs are flagged
    return pd.read_csv(out / "ref_0" / "tables" / "against.csv"), capsys.readouterr().out


def test_exported_reference_holds_every_run(reference):
    ref = against.load_reference(reference)
    assert sum(len(c.runs) for c in ref.cells) == 28 and len(ref.cells) == 14
    assert all(len(c.runs) == 2 and c.source for c in ref.cells)
    env = ref.cells[0].runs[0].environment
    assert env["torch"] == "2.14.1" and env["git_commit"] == "0" * 40 and env["device"] == "cpu"


def test_identical_rerun_passes(reference, tmp_path, capsys, fill_store):
    uri = _fill(fill_store, tmp_path)
    table, out = _report(uri, tmp_path / "reports", reference, capsys)
    assert len(table) == 28
    assert (table["verdict"] == "inside").all()
    assert table["Δ same seed"].abs().max() < 1e-5
    assert (table["collapsed classes"].fillna("–") == "–").all()
    assert "0 outside the band, 0 with collapsed classes, environment differs in 0 cell(s)" in out
    page = (tmp_path / "reports" / "ref_0" / "README.md").read_text()
    assert f"## Against the reference `ref` ({reference})" in page
    assert "Environment: no difference" in page


def test_outlier_collapse_and_environment_are_flagged(reference, tmp_path, capsys, fill_store):
    from mlflow import MlflowClient

    uri = _fill(fill_store, tmp_path)
    client = MlflowClient(uri)
    outlier, collapsed, other_env = (_run_id(uri, f"ref_0_{i:05d}") for i in (3, 5, 15))
    value = client.get_run(outlier).data.metrics["target_miou"]
    client.log_metric(outlier, "target_miou", value - 15.0, step=10_000)  # the latest value counts
    client.log_metric(collapsed, "iou/road", 0.0, step=10_000)
    client.set_tag(other_env, "torch", "2.5.0")
    table, out = _report(uri, tmp_path / "reports", reference, capsys)

    flagged = table[table["verdict"] == "OUTSIDE"]
    assert len(flagged) == 1 and (table["verdict"] == "inside").sum() == 27
    row = flagged.iloc[0]
    assert row["run"] == pytest.approx(value - 15.0, abs=1e-6) and row["ref n"] == 2
    assert not row["band low"] <= row["run"] <= row["band high"]
    assert row["band low"] < value < row["band high"]  # the run as it was is inside

    hit = table[table["collapsed classes"].fillna("–") != "–"]
    assert len(hit) == 1 and hit.iloc[0]["collapsed classes"].startswith("road 0.0 (ref ")
    assert "COLLAPSE:" in out and "road 0.0" in out
    assert "OUTSIDE:" in out and f"{value - 15.0:.2f} outside" in out
    assert "ENVIRONMENT:" in out and "torch: 2.14.1, 2.5.0 here, 2.14.1 in the reference" in out
    assert "1 outside the band, 1 with collapsed classes, environment differs in 1 cell(s)" in out


def test_band_is_the_t_prediction_interval():
    """Own spread (n >= 3): mean ± t(0.975, n-1) · s · sqrt(1 + 1/n); pooled over entries for a cell
    with one run; the stated tolerance when no entry has a spread."""
    from scipy import stats

    values = [40.0, 41.5, 39.0]
    cells = [{"benchmark": "a->b", "architecture": "x/y", "host": "dacs", "scale": "cpu", "source": "test",
              "runs": [{"seed": i, "value": v} for i, v in enumerate(values)]},
             {"benchmark": "a->b", "architecture": "x/z", "host": "dacs", "scale": "cpu", "source": "test",
              "mean": 30.0, "n": 4, "std": 2.0},
             {"benchmark": "a->b", "architecture": "x/w", "host": "dacs", "scale": "cpu", "source": "test",
              "runs": [{"seed": 0, "value": 20.0}]}]
    ref = against.Reference.model_validate({"format": against.FORMAT, "name": "t", "cells": cells})
    s = pd.Series(values).std()
    half = stats.t.ppf(0.975, 2) * s * math.sqrt(1 + 1 / 3)
    b = against.band(ref.cells[0], ref)
    assert (b.low, b.high) == pytest.approx((40.1666667 - half, 40.1666667 + half))
    pooled = math.sqrt((2 * s ** 2 + 3 * 2.0 ** 2) / 5)
    b = against.band(ref.cells[2], ref)
    assert b.high - 20.0 == pytest.approx(stats.t.ppf(0.975, 5) * pooled * math.sqrt(2))
    lone = against.Reference.model_validate({"format": against.FORMAT, "name": "t", "cells": cells[2:],
                                             "tolerance": {"value": 3.0, "source": "test"}})
    assert (against.band(lone.cells[0], lone).low, against.band(lone.cells[0], lone).high) == (17.0, 23.0)
    assert against.band(lone.cells[0], lone.model_copy(update={"tolerance": None})) is None


_GOOD = """format: udabench-reference/1
name: bad
cells:
  - benchmark: gta5->cityscapes
    architecture: daformer/pvt_v2_b5
    host: dacs
    scale: paper
    mean: 68.3
    n: 3
    source: somewhere
"""


@pytest.mark.parametrize("change, expected", [
    (("mean: 68.3", "mean: lots"), "line 8: field cells[0].mean: Input should be a valid number"),
    (("    source: somewhere\n", ""), "line 4: field cells[0].source: Field required"),
    (("n: 3", "n: 3\n    seeds: 3"), "line 10: field cells[0].seeds: unknown field; expected one of: benchmark"),
    (("n: 3", "n: 3\n    std: 0.5\n    runs: [{value: 101}]"), "field cells[0].runs[0].value: Input should be "
                                                              "less than or equal to 100"),
    (("n: 3", "n: 1\n    std: 0.5"), "line 4: field cells[0]: 'std' needs 'n' >= 2"),
    (("format: udabench-reference/1", "format: 2"), "line 1: field format: expected 'udabench-reference/1'"),
    (("cells:", "cells: ["), "line 4: not valid YAML (expected the node content"),
])
def test_malformed_reference_is_exit_2_naming_file_line_and_field(tmp_path, capsys, change, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(_GOOD.replace(*change))
    assert main(["report", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out",
                 str(tmp_path / "r"), "--against", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and expected in err, err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_malformed_results_table_is_exit_2(tmp_path, capsys):
    table = tmp_path / "gap" / "tables" / "trials.csv"
    table.parent.mkdir(parents=True)
    table.write_text("run_id,architecture,host,seed\nabc,deeplabv2/resnet18,dacs,0\n")
    assert main(["report", "--export-reference", str(tmp_path / "o.yaml"), str(tmp_path / "gap")]) == 2
    assert f"{table}: line 1: no column 'aux'" in capsys.readouterr().err


def test_published_reference_parses_and_every_number_has_a_source():
    ref = against.load_reference(ROOT / "references" / "paper.yaml")
    assert ref.tolerance is not None and ref.tolerance.source.strip()
    assert ref.environment["source"].strip()
    for cell in ref.cells:
        assert cell.source.strip() and cell.mean is not None
        assert cell.std is None  # none of the sources publishes a seed std: none is made up
        assert all(run.source and run.source.strip() for run in cell.runs)
        assert cell.n in (None, 3)  # 3 where a source says "mean over three seeds", else not stated
    daformer = next(c for c in ref.cells if c.method == "DAFormer" and c.benchmark == "gta5->cityscapes")
    assert (daformer.mean, daformer.runs[0].value, daformer.architecture) == (68.3, 68.85, "daformer/pvt_v2_b5")
    for cell in ref.cells:
        if cell.scale == "paper-synthia":
            assert cell.metric == "target_miou16"


def test_committed_cpu_reference_parses_and_pools_the_gap_seeds():
    ref = against.load_reference(ROOT / "references" / "cpu.yaml")
    s, df = ref.pooled()
    assert df == 16  # gap calibration: 4 cells of 3 seeds, 2 of 5
    dacs = next(c for c in ref.cells if c.architecture == "deeplabv2/resnet18" and c.host == "dacs"
                and c.aux == "none" and not c.axes)
    assert sorted(r.seed for r in dacs.runs) == ["0", "1", "2", "3", "4"]
    assert all(r.source and r.environment.get("data_hash") for c in ref.cells for r in c.runs)


@pytest.mark.slow
def test_committed_cpu_reference_is_what_the_export_writes(tmp_path, monkeypatch):
    """references/cpu.yaml is regenerated by the command in references/README.md, unchanged."""
    if subprocess.run(["git", "cat-file", "-e", "68c59eb"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("commit 68c59eb not in this clone")
    monkeypatch.chdir(ROOT)  # the command's paths (reports/..., studies/...) are the project's
    committed = (ROOT / "references" / "cpu.yaml").read_text()
    command = committed.splitlines()[0].split("`")[1].split()
    out = tmp_path / "cpu.yaml"
    args = [a if a != "references/cpu.yaml" else str(out) for a in command[2:]]
    assert main(["report", *args, "--reference-name", "cpu"]) == 0
    assert out.read_text().splitlines()[1:] == committed.splitlines()[1:]

"""`udabench report` on a real sqlite MLflow store filled through the MLflow client in the tracking
schema (benchmarks/bench_report.py): numbers, statistics, refusal of mixed runs, LaTeX, figures.

The report on runs of real `udabench study run` trials is in tests/test_report_study.py.
"""

from __future__ import annotations

import json
import re
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_benchmark

from harness.cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory, fill_store):
    """One study of 2 architectures x (host, contrastive, mim, mfm x 4 mask ratios) x 2 seeds, plus
    one failed run, and a report built from it."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    fill_store(uri, n_runs=29, studies=1, evals=3, prefix="abl", failed=1)
    out = tmp / "reports"
    assert main(["report", "abl_0", "--tracking-uri", uri, "--out", str(out)]) == 0
    return uri, out


def _mlflow_runs(uri: str, study: str) -> list[dict]:
    """The finished runs straight from MLflow (no pandas, no report code)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    rows = []
    for run in client.search_runs([exp.experiment_id], max_results=10_000):
        if run.info.status != "FINISHED":
            continue
        p = run.data.params
        aux = sorted({k.split(".")[2] for k in p if k.startswith("method.aux.") and k.count(".") >= 3})
        rows.append({"key": (f"{p['model.arch']}/{p['model.backbone']}", p["method.host"],
                             "+".join(aux) or "none", p.get("method.aux.mfm.options.mask_ratio", "–")),
                     "seed": p["seed"], "metrics": run.data.metrics})
    return rows


def test_main_table_equals_mlflow(store):
    uri, out = store
    runs = _mlflow_runs(uri, "abl_0")
    table = pd.read_csv(out / "abl_0" / "tables" / "main.csv", dtype={"axis:mask_ratio": str})
    assert len(runs) == 28 and table["runs"].sum() == 28
    assert len(table) == 14
    for _, row in table.iterrows():
        key = (row["architecture"], row["host"], row["aux"], row["axis:mask_ratio"])
        mine = [r for r in runs if r["key"] == key]
        assert mine, key
        assert row["runs"] == len(mine)
        values = [r["metrics"]["target_miou"] for r in mine]
        assert row["target_miou:mean"] == pytest.approx(statistics.mean(values), abs=1e-4)
        assert row["target_miou:std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
        road = [r["metrics"]["iou/road"] for r in mine]
        assert row["iou/road:mean"] == pytest.approx(statistics.mean(road), abs=1e-4)
        trains = [r["metrics"]["iou/train"] for r in mine if "iou/train" in r["metrics"]]
        assert row["iou/train:n"] == len(trains)  # absent class: fewer values, and the table says so


def test_paired_gain_and_interval(store):
    """Δ over the host = mean paired difference over common seeds, 95% CI from scipy's paired t-test."""
    from scipy import stats

    uri, out = store
    runs = _mlflow_runs(uri, "abl_0")
    gains = pd.read_csv(out / "abl_0" / "tables" / "gains.csv", dtype={"axis:mask_ratio": str})
    row = gains[(gains["architecture"] == "deeplabv2/resnet18") & (gains["aux"] == "mim")].iloc[0]
    arch = "deeplabv2/resnet18"
    aux = {r["seed"]: r["metrics"]["target_miou"] for r in runs if r["key"] == (arch, "dacs", "mim", "–")}
    host = {r["seed"]: r["metrics"]["target_miou"] for r in runs if r["key"] == (arch, "dacs", "none", "–")}
    seeds = sorted(set(aux) & set(host))
    res = stats.ttest_rel([aux[s] for s in seeds], [host[s] for s in seeds])
    ci = res.confidence_interval(0.95)
    assert row["pairs"] == len(seeds) == 2
    assert row["target_miou:gain"] == pytest.approx(statistics.mean(aux[s] - host[s] for s in seeds), abs=1e-4)
    assert row["target_miou:ci_low"] == pytest.approx(ci.low, abs=1e-4)
    assert row["target_miou:ci_high"] == pytest.approx(ci.high, abs=1e-4)
    md = (out / "abl_0" / "tables" / "main.md").read_text()
    assert f"{row['target_miou:gain']:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}] (n=2)" in md


def test_page_metrics_and_failed_runs(store):
    uri, out = store
    page = (out / "abl_0" / "README.md").read_text()
    assert "from 28 finished runs (runs not included: 1 failed)" in page
    for name in ("main", "gains", "ablation", "cost"):
        assert f"(tables/{name}.tex)" in page
        for ext in ("md", "tex", "csv"):
            assert (out / "abl_0" / "tables" / f"{name}.{ext}").stat().st_size > 0
    for fig in re.findall(r"\]\(figures/([^)]+\.png)\)", page):
        assert (out / "abl_0" / "figures" / fig).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    main_csv = pd.read_csv(out / "abl_0" / "tables" / "main.csv")
    assert metrics["abl_0"]["runs"] == 28
    assert metrics["abl_0"]["best_mean"] == pytest.approx(main_csv["target_miou:mean"].max(), abs=1e-3)
    group = metrics["abl_0"]["groups"]["deeplabv2/resnet18/dacs+mfm/mask_ratio=0.4"]
    assert group["n"] == 2 and "gain_ci_low" in group


def test_ablation_axis_from_tags(store):
    """The mask-ratio axis (tag axis.mask_ratio) becomes a table column sorted numerically; host-only
    rows have no value; the model/aux axes are implied by the identity and not repeated."""
    _, out = store
    table = pd.read_csv(out / "abl_0" / "tables" / "ablation.csv", dtype={"axis:mask_ratio": str})
    assert [c for c in table.columns if c.startswith("axis:")] == ["axis:mask_ratio"]
    mfm = table[(table["aux"] == "mfm") & (table["architecture"] == "deeplabv2/resnet18")]
    assert list(mfm["axis:mask_ratio"]) == ["0.2", "0.4", "0.6", "0.8"]
    assert set(table.loc[table["aux"] != "mfm", "axis:mask_ratio"]) == {"–"}


def test_latex_is_sane(store):
    _, out = store
    for tex in (out / "abl_0" / "tables").glob("*.tex"):
        text = tex.read_text()
        assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1, tex
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            assert text.count(rule) == 1, (tex, rule)
        assert text.isascii(), tex  # ±, Δ, ×, – written as LaTeX
        body = text.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}")[0]
        ncols = len(re.match(r"\{([lrc]+)\}", body).group(1))
        rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
        assert rows and all(len(re.findall(r"(?<!\\)&", ln)) == ncols - 1 for ln in rows), tex
        no_math = re.sub(r"\$[^$]*\$", "", body)
        assert not re.search(r"(?<!\\)[_%#]", no_math), tex  # special characters escaped
        assert body.count("{") == body.count("}"), tex


def test_figures_written(store):
    _, out = store
    figs = out / "abl_0" / "figures"
    names = {p.stem for p in figs.glob("*.png")}
    assert {"miou_vs_mask_ratio", "class_gains", "curves_miou", "curves_loss"} <= names
    for name in names:
        png = (figs / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        root = ET.parse(figs / f"{name}.svg").getroot()
        assert root.tag.endswith("svg")


def test_mixed_data_hashes_refused(tmp_path, capsys, fill_store):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=6, studies=1, evals=2, prefix="mix",
                        data_hash={4: "synthetic-ffff0000", 5: "synthetic-ffff0000"})
    out = tmp_path / "reports"
    (out / "mix_0").mkdir(parents=True)
    (out / "mix_0" / "README.md").write_text("previous report\n")
    assert main(["report", "mix_0", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "data_hash = synthetic-0123abcd: mix_0_00000; mix_0_00001; mix_0_00002; mix_0_00003" in err
    assert "data_hash = synthetic-ffff0000: mix_0_00004; mix_0_00005" in err
    assert "--allow-mixed" in err
    assert (out / "mix_0" / "README.md").read_text() == "previous report\n"  # nothing overwritten
    assert sorted(p.name for p in out.iterdir()) == ["mix_0"]
    assert main(["report", "mix_0", "--tracking-uri", uri, "--out", str(out), "--no-figures",
                 "--allow-mixed"]) == 0
    page = (out / "mix_0" / "README.md").read_text()
    assert "Mixed runs" in page and "synthetic-ffff0000: 2 runs" in page


def test_scales_not_mixed(tmp_path, capsys, fill_store):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=4, studies=1, evals=2, prefix="sc", scale="cpu")
    fill_store(uri, n_runs=2, studies=1, evals=2, prefix="sc", scale="smoke", seed=1)
    out = tmp_path / "reports"
    assert main(["report", "sc_0", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 2
    assert "scale = smoke" in capsys.readouterr().err
    assert main(["report", "--scale", "cpu", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 0
    assert pd.read_csv(out / "sc_0" / "tables" / "main.csv")["runs"].sum() == 4
    assert main(["report", "sc_0", "--scale", "sc_0=smoke", "--tracking-uri", uri, "--out", str(out),
                 "--no-figures"]) == 0
    assert pd.read_csv(out / "sc_0" / "tables" / "main.csv")["runs"].sum() == 2
    assert json.loads((out / "metrics.json").read_text())["sc_0"]["runs"] == 2


def test_changed_study_config_refused(tmp_path, capsys, fill_store):
    """Runs of one setting with a different config (the study file changed; old runs remain) are not
    averaged together silently."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=4, studies=1, evals=2, prefix="chg", iterations=1000)
    fill_store(uri, n_runs=2, studies=1, evals=2, prefix="chg", iterations=500, seed=1)
    out = tmp_path / "reports"
    assert main(["report", "chg_0", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "runs of one setting differ in schedule.iterations" in err
    assert "schedule.iterations = 500: chg_0_00000; chg_0_00001" in err


def test_rerun_of_a_config_supersedes_the_older_run(tmp_path, fill_store):
    """A trial run again (same config hash, e.g. `study run --force`) counts once, with its latest run."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=4, studies=1, evals=2, prefix="dup", seed=0)
    fill_store(uri, n_runs=1, studies=1, evals=2, prefix="dup", seed=7)  # trial 0 again
    out = tmp_path / "reports"
    assert main(["report", "dup_0", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 0
    table = pd.read_csv(out / "dup_0" / "tables" / "main.csv")
    assert table["runs"].sum() == 4
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dup_0")
    latest = client.search_runs([exp.experiment_id], "tags.trial_id = 'dup_0_00000'",
                                order_by=["attributes.start_time DESC"])[0]
    row = table[(table["aux"] == "none") & (table["architecture"] == "deeplabv2/resnet18")].iloc[0]
    assert row["target_miou:mean"] == pytest.approx(latest.data.metrics["target_miou"], abs=1e-4)
    assert "1 superseded by a later run of the same config" in (out / "dup_0" / "README.md").read_text()


def test_synthia_protocol_columns(tmp_path, fill_store):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=4, studies=1, evals=2, prefix="syn", protocol="16")
    out = tmp_path / "reports"
    assert main(["report", "syn_0", "--tracking-uri", uri, "--out", str(out), "--no-curves"]) == 0
    header = (out / "syn_0" / "tables" / "main.md").read_text().splitlines()[0]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert "mIoU16" in cols and "mIoU13" in cols and "mIoU" not in cols
    assert "terrain" not in cols and "truck" not in cols and "train" not in cols and "wall" in cols
    assert json.loads((out / "metrics.json").read_text())["syn_0"]["metric"] == "target_miou16"


def test_bad_input_messages(tmp_path, capsys, fill_store):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["report", "x", "--tracking-uri", missing, "--out", str(tmp_path / "r")]) == 2
    assert "none.db: no such file" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=2, studies=1, evals=1, prefix="known")
    assert main(["report", "knwon_0", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no study named 'knwon_0' (did you mean 'known_0'?)" in err
    assert not (tmp_path / "r").exists()


def test_hosts_table_pairs_each_host_with_source_only(tmp_path):
    """A study that varies the host (the benchmark's calibration): each host minus source_only, same
    architecture, paired over seeds, with scipy's paired-t interval."""
    from scipy import stats

    bench = load_benchmark("bench_report")
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    n = 2 * len(bench.ARCHS) * (3 + len(bench.MASK_RATIOS))  # two full seeds
    bench.fill_store(uri, n_runs=n, studies=1, evals=2, prefix="gap", host="source_only", seed=3)
    bench.fill_store(uri, n_runs=n, studies=1, evals=2, prefix="gap", host="dacs", seed=4)
    out = tmp_path / "reports"
    assert main(["report", "gap_0", "--tracking-uri", uri, "--out", str(out), "--no-figures"]) == 0
    hosts = pd.read_csv(out / "gap_0" / "tables" / "hosts.csv")
    assert set(hosts["host"]) == {"dacs"} and set(hosts["aux"]) == {"none"}
    runs = _mlflow_runs(uri, "gap_0")
    for _, row in hosts.iterrows():
        arch = row["architecture"]
        dacs = {r["seed"]: r["metrics"]["target_miou"] for r in runs if r["key"] == (arch, "dacs", "none", "–")}
        so = {r["seed"]: r["metrics"]["target_miou"] for r in runs if r["key"] == (arch, "source_only", "none", "–")}
        seeds = sorted(set(dacs) & set(so))
        ci = stats.ttest_rel([dacs[s] for s in seeds], [so[s] for s in seeds]).confidence_interval(0.95)
        assert row["pairs"] == len(seeds) == 2
        assert row["target_miou:gain"] == pytest.approx(statistics.mean(dacs[s] - so[s] for s in seeds), abs=1e-4)
        assert (row["target_miou:ci_low"], row["target_miou:ci_high"]) == (
            pytest.approx(ci.low, abs=1e-4), pytest.approx(ci.high, abs=1e-4))
    page = (out / "gap_0" / "README.md").read_text()
    assert "## Paired gain over source_only" in page


def test_page_says_which_at_scale_cut_it_shows(tmp_path):
    """A study reported at a scale with an `at_scale` cut says so, with the trials kept of the grid's."""
    from harness.report.runs import select

    configs = Path(__file__).resolve().parents[1] / "studies" / "configs"
    path = tmp_path / "cut.yaml"
    path.write_text(f"""
description: a cut study
config: {configs / 'daformer.yaml'}
grid:
  - {{aux: [none, mfm], seed: [0, 1, 2]}}
  - {{aux: [none], seed: [3]}}
at_scale:
  cpu: {{grid: {{seed: [0]}}}}
""")
    assert select(path, ["cpu"]).cut == ("At scale `cpu` this is the study's `at_scale.cpu` cut (seed 0): 2 of "
                                         "the grid's 7 trials; the description above is the whole study.")
    assert select(path, ["smoke"]).cut == ""


def test_cost_table_shows_the_load_its_timings_were_taken_under(store, tmp_path, fill_store):
    """Study trials log the 5-minute load average at each evaluation; the cost table shows its mean and
    max per row beside the timings, and runs logged without it get no load column."""
    from mlflow import MlflowClient

    _, old_out = store
    assert "load_avg_5min:mean" not in pd.read_csv(old_out / "abl_0" / "tables" / "cost.csv").columns
    assert "load (5 min)" not in (old_out / "abl_0" / "tables" / "cost.md").read_text()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=8, studies=1, evals=2, prefix="load", failed=0)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("load_0")
    loads = {}
    for k, run in enumerate(client.search_runs([exp.experiment_id])):
        loads[run.info.run_id] = 0.5 + k
        client.log_metric(run.info.run_id, "load_avg_5min", 0.5 + k, step=1)
    out = tmp_path / "reports"
    assert main(["report", "load_0", "--tracking-uri", uri, "--out", str(out)]) == 0
    cost = pd.read_csv(out / "load_0" / "tables" / "cost.csv")
    assert cost["load_avg_5min:mean"].notna().all()
    runs = pd.read_csv(out / "load_0" / "tables" / "trials.csv")
    assert cost["runs"].sum() == len(runs) == len(loads)
    # every run's load counted once: the run-weighted mean of the rows is the mean over runs
    weighted = (cost["load_avg_5min:mean"] * cost["runs"]).sum() / cost["runs"].sum()
    assert weighted == pytest.approx(statistics.mean(loads.values()))
    assert cost["load_avg_5min:max"].max() == max(loads.values())
    assert "load (5 min)" in (out / "load_0" / "tables" / "cost.md").read_text()
    assert "5-minute load average" in (out / "load_0" / "README.md").read_text()

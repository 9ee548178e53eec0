"""The report's fast paths give what the plain ones gave (issue 21, report time): the runs read with
plain queries on MLflow's SQL store equal `mlflow.search_runs`; the columns are sorted whatever
PYTHONHASHSEED is; studies written side by side by worker processes equal studies written one after
the other; the curves and per-class gains drawn with matplotlib are the PNGs seaborn drew.

Stores are real, filled through the MLflow client (benchmarks/bench_report.py).
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory, fill_store) -> str:
    """Two studies of 29 runs (2 architectures x host, contrastive, mim, mfm x 4 mask ratios; one
    failed run each), then the cases search_runs has rules for: a deleted run, a running run without
    an end time, a NaN latest metric, an empty tag."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path_factory.mktemp('speed') / 'mlflow.db'}"
    fill_store(uri, n_runs=58, studies=2, evals=3, prefix="fast", failed=1)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fast_1")
    runs = client.search_runs([exp.experiment_id], order_by=["tags.trial_id"])
    client.delete_run(runs[0].info.run_id)
    client.log_batch(runs[1].info.run_id, metrics=[Metric("pixel_acc", math.nan, 10**13, 10**6)])
    client.create_run(exp.experiment_id, tags={"study": "fast_1", "trial_id": "fast_1_running"})
    client.set_tag(runs[2].info.run_id, "note", "")
    return uri


def test_sql_read_equals_search_runs(store):
    """The frame read with four queries is `mlflow.search_runs`'s, value for value, dtype for dtype,
    row for row (newest first), with its columns sorted; the metric history is MLflow's per key."""
    import mlflow
    from mlflow import MlflowClient

    from harness.report.runs import _search_runs_sql, _sorted_columns, _sql_store, metric_history

    client = MlflowClient(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    mlflow.set_tracking_uri(store)
    try:
        expected = _sorted_columns(mlflow.search_runs(experiment_ids=ids))
    finally:
        mlflow.set_tracking_uri(None)
    got = _search_runs_sql(_sql_store(client), ids)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert len(got) == 2 * 29 - 1 + 1  # the deleted run out, the running one in
    assert got["end_time"].isna().sum() == 1  # the running run
    assert got["metrics.pixel_acc"].isna().sum() == 2  # the running run (none logged) and the NaN

    run_ids = list(got["run_id"])
    keys = ["target_miou", "loss/mfm", "pixel_acc", "no_such_metric"]
    history = metric_history(run_ids, keys, store)
    for key in keys:
        mine = history[history["key"] == key]
        assert len(mine) == sum(len(client.get_metric_history(r, key)) for r in run_ids)
        for rid, group in list(mine.groupby("run_id"))[:5]:
            theirs = client.get_metric_history(rid, key)
            assert list(group["step"]) == [m.step for m in theirs]
            assert np.array_equal(group["value"], [m.value for m in theirs], equal_nan=True)


def test_loss_columns_sorted_whatever_the_hash_seed(store, tmp_path):
    """search_runs orders its columns by Python's string hash: trials.csv (and the loss facets) came
    out in a different order per PYTHONHASHSEED. Two processes with different seeds: same bytes."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        res = subprocess.run([str(BIN / "udabench"), "report", "fast_0", "--tracking-uri", store, "--out", str(out),
                              "--no-figures"], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        outs.append((out / "fast_0" / "tables" / "trials.csv").read_bytes())
    assert outs[0] == outs[1]
    header = outs[0].decode().splitlines()[0].split(",")
    losses = [c for c in header if c.startswith("loss/")]
    assert losses == sorted(losses) == ["loss/contrastive", "loss/mfm", "loss/mim", "loss/mixed_ce", "loss/source_ce"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_workers_write_what_one_process_writes(store, tmp_path):
    """--jobs 2 (two forked workers) and --jobs 1 give the same files, metrics.json included; the
    pages differ only in the command they quote."""
    for jobs in ("1", "2"):
        assert main(["report", "fast_0", "fast_1", "--tracking-uri", store, "--out", str(tmp_path / jobs),
                     "--jobs", jobs]) == 0
    one, two = _tree(tmp_path / "1"), _tree(tmp_path / "2")
    assert sorted(one) == sorted(two) and len(one) > 30
    for name in one:
        if name.endswith("README.md"):
            assert one[name].replace(b" --jobs 1", b"") == two[name].replace(b" --jobs 2", b""), name
        else:
            assert one[name] == two[name], name
    assert set(json.loads(one["metrics.json"])) == {"fast_0", "fast_1"}


def test_a_failing_worker_leaves_the_other_studies_written(store, tmp_path, monkeypatch):
    """A study whose folder fails in a worker raises after the others are written with their
    headline numbers; the failed one leaves no folder (forked workers inherit the patched figure)."""
    import harness.report.page as page

    def broken(data, *args, **kwargs):
        if data.name == "fast_1":
            raise RuntimeError("figure failed")
        return real(data, *args, **kwargs)

    real = page.fig_class_gains
    monkeypatch.setattr(page, "fig_class_gains", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="figure failed"):
        main(["report", "fast_0", "fast_1", "--tracking-uri", store, "--out", str(out), "--jobs", "2",
              "--no-curves"])
    assert sorted(p.name for p in out.iterdir()) == ["fast_0", "metrics.json"]
    assert set(json.loads((out / "metrics.json").read_text())) == {"fast_0"}


def test_a_stopping_report_puts_no_new_folder_in_place(store, tmp_path, monkeypatch):
    """In a worker of a report that is stopping (Ctrl-C, an error in the parent), a study is not
    started, and one already drawn is discarded before its swap: no folder without its metrics."""
    import threading

    import harness.report.page as page
    from harness.report.runs import ReportOptions, load_runs, tidy

    opts = ReportOptions(out=tmp_path, tracking_uri=store)
    data = tidy(load_runs(["fast_0"], store), "fast_0", opts)
    stop = threading.Event()
    monkeypatch.setattr(page, "_stop", stop)
    stop.set()
    with pytest.raises(page._Stopped):
        page._write_in_worker(data, opts, "udabench report")
    with pytest.raises(page._Stopped):
        page.write_study(data, ReportOptions(out=tmp_path, tracking_uri=store, figures=False), "udabench report")
    assert list(tmp_path.iterdir()) == []


def test_jobs_default_follows_idle_cpus(monkeypatch):
    """--jobs 0 (the default): one worker per CPU no other process keeps busy, at least one, at most
    one per study."""
    import harness.report.runs as runs

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for busy, studies, expected in ((0, 4, 2), (0, 1, 1), (1, 4, 1), (3, 4, 1)):
        monkeypatch.setattr(runs, "busy_cpus", lambda busy=busy: busy)
        assert runs.ReportOptions(jobs=0).workers(studies) == expected
    assert runs.ReportOptions(jobs=3).workers(4) == 3
    assert main(["report", "x", "--jobs", "-1"]) == 2


def test_busy_cpus_counts_a_spinning_process():
    from harness.report.runs import busy_cpus

    if not Path("/proc/loadavg").exists():
        pytest.skip("counts runnable threads from /proc/loadavg (Linux)")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert busy_cpus() >= 1
    finally:
        spin.kill()
        spin.wait()


def test_mean_and_sd_are_pandas_numbers():
    """The curves' means and sds are pandas' Series.mean/std of each step's values in ascending
    order (what seaborn's lineplot computes), bit for bit."""
    from harness.report.figures import _mean_sd

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 60))
        df = pd.DataFrame({"step": rng.integers(0, 6, n) * 100,
                           "value": rng.normal(rng.uniform(-1e3, 1e3), rng.uniform(1e-6, 1e3), n)})
        x, mean, sd = _mean_sd(df)
        groups = [g.sort_values() for _, g in df.groupby("step")["value"]]
        if max(map(len, groups)) == 1:
            continue
        assert np.array_equal(x, sorted(df["step"].unique()))
        assert np.array_equal(mean, [g.mean() for g in groups])
        assert np.array_equal(sd, [g.std() if len(g) > 1 else np.nan for g in groups], equal_nan=True)


# --------------------------------------------------------------------------------------------------
# the figures seaborn drew (the report's code before issue 21), against the ones drawn now

def _seaborn_curves(data, history, folder: Path, max_groups: int) -> None:
    from harness.report.figures import _plotting, _save
    from harness.report.tables import _label

    plt, sns = _plotting()
    runs = data.runs.copy()
    runs["method"] = _label(runs, data.axes)
    keep = list(runs.groupby("method")[data.metric].mean().sort_values(ascending=False).index[:max_groups])
    hist = history.merge(runs[["run_id", "method"]], on="run_id")
    hist = hist[hist["method"].isin(keep)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(data=hist[hist["key"] == data.metric], x="step", y="value", hue="method", hue_order=keep,
                 errorbar="sd", ax=ax)
    ax.set_xlabel("iteration")
    ax.set_ylabel("target mIoU (%)")
    ax.legend(fontsize=7, loc="best")
    _save(fig, folder, "curves_miou")
    losses = hist[hist["key"].str.startswith("loss/")]
    g = sns.relplot(data=losses, x="step", y="value", hue="method", hue_order=keep, col="key",
                    col_wrap=min(3, losses["key"].nunique()), kind="line", errorbar="sd",
                    height=2.6, aspect=1.3, facet_kws={"sharey": False})
    g.set_axis_labels("iteration", "loss")
    g.set_titles("{col_name}")
    _save(g.figure, folder, "curves_loss")


def _seaborn_class_gains(data, folder: Path) -> None:
    from harness.labels import CLASSES
    from harness.report.figures import _plotting, _save
    from harness.report.runs import NO_AUX, iou_metric
    from harness.report.stats import _baseline_mask
    from harness.report.tables import _label

    plt, sns = _plotting()
    runs = data.runs
    metrics = [iou_metric(CLASSES[i]) for i in data.classes]
    best: dict[tuple, tuple] = {}
    for _key, grp in runs[runs["aux"] != NO_AUX].groupby(data.group_cols, sort=False):
        base = runs[_baseline_mask(runs, grp.iloc[0])]
        a = grp.groupby("seed")[metrics + [data.metric]].mean()
        b = base.groupby("seed")[metrics + [data.metric]].mean()
        common = a.index.intersection(b.index)
        d = a.loc[common] - b.loc[common]
        first = grp.iloc[0]
        r = (first["architecture"], first["host"], first["aux"], d[data.metric].mean(),
             _label(grp.iloc[:1], data.axes, arch=False).iloc[0], d[metrics])
        if r[:3] not in best or r[3] > best[r[:3]][3]:
            best[r[:3]] = r
    frames = []
    for r in best.values():
        d = r[5].rename(columns={iou_metric(CLASSES[i]): CLASSES[i] for i in data.classes})
        long = d.reset_index().melt(id_vars="seed", var_name="class", value_name="gain")
        long["architecture"] = r[0]
        long["method"] = f"{r[1]} + {r[2]}"
        frames.append(long)
    g = sns.catplot(data=pd.concat(frames, ignore_index=True), kind="bar", y="class", x="gain", hue="method",
                    col="architecture", order=[CLASSES[i] for i in data.classes], errorbar="sd", orient="h",
                    height=0.25 * len(data.classes) + 1.5, aspect=0.6, legend_out=True)
    for ax in g.axes.flat:
        ax.axvline(0, color="black", lw=0.8)
    g.set_axis_labels("IoU gain over host (points)", "")
    g.set_titles("{col_name}")
    _save(g.figure, folder, "class_gains")


def test_figures_are_the_pngs_seaborn_drew(store, tmp_path):
    """fig_curves and fig_class_gains draw with matplotlib what seaborn's lineplot, relplot and
    catplot drew (the same artists, laid out in the same steps): the PNGs are byte for byte the same."""
    from harness.report.figures import fig_class_gains, fig_curves
    from harness.report.page import curve_history
    from harness.report.runs import ReportOptions, load_runs, tidy

    opts = ReportOptions(tracking_uri=store)
    data = tidy(load_runs(["fast_0"], store), "fast_0", opts)
    history = curve_history(data, opts)
    fig_curves(data, history, tmp_path / "now", 16)
    fig_class_gains(data, tmp_path / "now")
    _seaborn_curves(data, history, tmp_path / "seaborn", 16)
    _seaborn_class_gains(data, tmp_path / "seaborn")
    for name in ("curves_miou", "curves_loss", "class_gains"):
        assert filecmp.cmp(tmp_path / "now" / f"{name}.png", tmp_path / "seaborn" / f"{name}.png",
                           shallow=False), name

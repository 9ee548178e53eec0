"""Dense training curves (issue 21): the engine's `on_log` every `log_interval` iterations, its MLflow
logs under `train/` (`TrialRun.log_train`; a resumed trial never logs a step twice), and the report's
curves drawn from them (smoothed per run, mean over seeds with a min-max band), with every table as it
was without them.

Fast: the real engine at smoke scale and real sqlite stores, without Ray. Slow: a real smoke study
(`udabench study run`, Ray, MLflow) and its report.
"""

from __future__ import annotations

import filecmp
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.engine.training import train
from harness.study import tracking

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMING = ("step_time", "throughput", "peak_mem_mb")


def smoke_cfg(smoke_config, out: Path, *overrides):
    return smoke_config(out, "schedule.iterations=6", "eval.interval=3", *overrides)


def untimed(metrics: dict[str, float]) -> dict:
    return {k: ("nan" if math.isnan(v) else v) for k, v in metrics.items() if k not in TIMING}


# --------------------------------------------------------------------------------------------------
# the engine

def test_on_log_gives_the_means_of_each_window_and_leaves_the_evaluations_as_they_were(smoke_config, tmp_path):
    """log_interval 1: on_log at every iteration with that step's losses, whose means over iterations
    1-3 and 4-6 are the evaluations' `loss/*`; log_interval 4 (not a multiple of eval.interval 3): logs
    at 4 and at the end (6), each the mean of its own window across the evaluation at 3. A run without
    on_log ends with the same metrics, timing aside (the tables' numbers do not depend on the logs)."""
    every: list = []
    evals: list = []
    final_1 = train(smoke_cfg(smoke_config, tmp_path / "a", "log_interval=1"), progress=False,
                    on_log=lambda it, m: every.append((it, m)), on_eval=lambda it, m, d: evals.append((it, m)))
    assert [it for it, _ in every] == [1, 2, 3, 4, 5, 6] and [it for it, _ in evals] == [3, 6]
    losses = [k for k in evals[0][1] if k.startswith(("loss/", "stat/"))]
    assert {"loss/sup", "loss/uda", "stat/pseudo_weight"} <= set(losses)
    for it, m in every:
        assert set(m) == {*losses, "step_time", "throughput", "lr"}, it
        assert m["step_time"] > 0 and m["throughput"] == pytest.approx(2 * 1 / m["step_time"])
    for (it, m), window in zip(evals, ([1, 2, 3], [4, 5, 6])):
        for key in losses:
            assert m[key] == pytest.approx(np.mean([every[i - 1][1][key] for i in window]), rel=1e-12), (it, key)
        assert every[it - 1][1]["lr"] == m["lr"]

    sparse: list = []
    final_4 = train(smoke_cfg(smoke_config, tmp_path / "b", "log_interval=4"), progress=False,
                    on_log=lambda it, m: sparse.append((it, m)))
    assert [it for it, _ in sparse] == [4, 6]
    for (it, m), window in zip(sparse, ([1, 2, 3, 4], [5, 6])):
        for key in losses:
            assert m[key] == pytest.approx(np.mean([every[i - 1][1][key] for i in window]), rel=1e-12), (it, key)

    final_none = train(smoke_cfg(smoke_config, tmp_path / "c"), progress=False)
    assert untimed(final_1) == untimed(final_4) == untimed(final_none)


# --------------------------------------------------------------------------------------------------
# MLflow: train/ logs beside the evaluations, each step once

def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_train_logs_keep_their_own_steps_and_a_reopened_run_takes_none_twice(tmp_path):
    """Dense logs go under train/, the evaluation's names keep the evaluation's values (the run's latest
    `loss/sup` is the evaluation's, though a train/ log shares its step). A trial killed after its train/
    log at 40 and before the evaluation at 40 was logged comes back from step 20: it logs neither 30 nor
    40 of train/ again (tag train_steps_not_relogged) but does log the evaluation at 40."""
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, "s", tmp_path)
    first = tracking.TrialRun.open(uri, exp, "t_1", "s.cpu.x", "seed=0", {"study": "s"}, {})
    for step in (10, 20, 30, 40):
        assert first.log_train({"loss/sup": step / 100, "throughput": 5.0}, step=step)
    assert first.log_metrics({"target_miou": 10.0, "loss/sup": 0.15}, step=20)
    c = tracking.client(uri)
    assert c.get_run(first.run_id).data.metrics["loss/sup"] == 0.15

    again = tracking.TrialRun.open(uri, exp, "t_1", "s.cpu.x", "seed=0", {"study": "s"}, {})
    assert (again.run_id, again.last_step, again.last_train_step) == (first.run_id, 20, 40)
    assert not again.log_train({"loss/sup": 99.0, "throughput": 9.0}, step=30)
    assert not again.log_train({"loss/sup": 98.0, "throughput": 9.0}, step=40)
    assert again.log_metrics({"target_miou": 12.0, "loss/sup": 0.35}, step=40)
    assert again.log_train({"loss/sup": 0.5, "throughput": 5.0}, step=50)
    run = c.get_run(first.run_id)
    assert run.data.tags["train_steps_not_relogged"] == "30,40" and "steps_not_relogged" not in run.data.tags
    assert _history(c, first.run_id, "train/loss/sup") == [(10, 0.1), (20, 0.2), (30, 0.3), (40, 0.4), (50, 0.5)]
    assert [s for s, _ in _history(c, first.run_id, "train/throughput")] == [10, 20, 30, 40, 50]
    assert _history(c, first.run_id, "loss/sup") == [(20, 0.15), (40, 0.35)]
    assert run.data.metrics["loss/sup"] == 0.35  # the tables' value: the last evaluation's
    assert tracking.steps_text(list(range(10, 1010, 10))) == "10,20,...,1000 (100 steps)"


class _Killed(Exception):
    pass


def test_a_resumed_run_logs_every_train_step_once(smoke_config, tmp_path):
    """The real engine logging through a TrialRun: killed after its train/ log at 3 (the last checkpoint:
    the evaluation at 2), then re-opened and resumed from that checkpoint. Each train/ key holds steps
    1-4 once, the value at 3 from the first attempt (the resumed run computed the same one again), and
    the evaluations are at 2 and 4."""
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, "s", tmp_path)
    cfg = smoke_cfg(smoke_config, tmp_path / "run", "schedule.iterations=4", "eval.interval=2", "log_interval=1")

    def attempt(kill_at=None, resume=None):
        run = tracking.TrialRun.open(uri, exp, "t_1", "s.smoke.x", "seed=0", {"study": "s"}, {})
        recomputed = {}

        def on_log(it, m):
            if not run.log_train(m, step=it):
                recomputed[it] = m
            if it == kill_at:
                raise _Killed(it)

        train(cfg, on_eval=lambda it, m, d: run.log_metrics(m, step=it), on_log=on_log, resume=resume,
              progress=False)
        return run, recomputed

    with pytest.raises(_Killed):
        attempt(kill_at=3)
    run, recomputed = attempt(resume=tmp_path / "run" / "checkpoint")
    assert run.resumed and list(recomputed) == [3]
    c = tracking.client(uri)
    data = c.get_run(run.run_id).data
    dense = [k for k in data.metrics if k.startswith("train/")]
    assert {"train/loss/sup", "train/loss/uda", "train/stat/pseudo_weight", "train/throughput",
            "train/step_time", "train/lr"} <= set(dense)
    for key in dense:
        assert [s for s, _ in _history(c, run.run_id, key)] == [1, 2, 3, 4], key
    for key in ("target_miou", "loss/sup"):
        assert [s for s, _ in _history(c, run.run_id, key)] == [2, 4], key
    for key in ("loss/sup", "loss/uda", "lr"):
        assert dict(_history(c, run.run_id, "train/" + key))[3] == recomputed[3][key]
    assert data.tags["train_steps_not_relogged"] == "3" and "steps_not_relogged" not in data.tags


# --------------------------------------------------------------------------------------------------
# the report

def test_smoothing_is_the_centred_rolling_mean_of_each_run():
    """`smoothed` equals pandas' `rolling(window, center=True, min_periods=1).mean()` per run and key
    (runs of different lengths, a NaN value, rows in any order); the window is ~5% of a run, odd, >= 5."""
    from harness.report.figures import smooth_window, smoothed

    rng = np.random.default_rng(0)
    rows = []
    for run in range(7):
        for key in ("train/loss/a", "train/throughput"):
            n = int(rng.integers(1, 40))
            rows += [(f"r{run}", key, 20 * (i + 1), float(rng.normal(run, 1))) for i in range(n)]
    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    df.loc[5, "value"] = np.nan
    df = df.sample(frac=1, random_state=1)
    for window in (1, 3, 5, 9):
        got = smoothed(df, window)
        want = df.sort_values(["key", "run_id", "step"], kind="stable").reset_index(drop=True)
        want["value"] = want.groupby(["key", "run_id"], sort=False)["value"].transform(
            lambda s, w=window: s.rolling(w, center=True, min_periods=1).mean())
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12, atol=1e-12)
        assert got[["run_id", "key", "step"]].equals(want[["run_id", "key", "step"]])
    assert [smooth_window(n) for n in (4, 100, 119, 800)] == [5, 5, 5, 41]


def test_the_band_is_the_seeds_min_and_max_and_the_line_their_mean():
    from harness.report.figures import dense_bands

    df = pd.DataFrame({"method": ["a"] * 5 + ["b"], "step": [20, 20, 20, 40, 40, 20],
                       "value": [1.0, 4.0, 2.5, 3.0, 5.0, 7.0]})
    bands = dense_bands(df)
    assert bands.loc[("a", 20)].tolist() == [2.5, 1.0, 4.0, 3]
    assert bands.loc[("a", 40)].tolist() == [4.0, 3.0, 5.0, 2]
    assert bands.loc[("b", 20)].tolist() == [7.0, 7.0, 7.0, 1]


def test_report_draws_dense_curves_and_keeps_every_table(fill_store, add_train_logs, tmp_path):
    """A study reported before and after its runs got dense train/ logs: every table and metrics.json
    byte for byte the same; the loss curves now come from the dense logs, with the pseudo-label weight
    and the throughput beside them (the caption says how they are smoothed and what the band is); the
    mIoU curve is the same PNG; a second report draws the same bytes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_store(uri, n_runs=29, studies=1, evals=4, prefix="dense", failed=1)
    assert main(["report", "dense_0", "--tracking-uri", uri, "--out", str(tmp_path / "before")]) == 0
    assert add_train_logs(uri, "dense_0") == 29
    for out in ("after", "again"):
        assert main(["report", "dense_0", "--tracking-uri", uri, "--out", str(tmp_path / out)]) == 0
    before, after, again = (tmp_path / name / "dense_0" for name in ("before", "after", "again"))
    tables = sorted(p.relative_to(before) for p in (before / "tables").iterdir())
    assert len(tables) > 10 and tables == sorted(p.relative_to(after) for p in (after / "tables").iterdir())
    for name in tables:
        assert filecmp.cmp(before / name, after / name, shallow=False), name
    assert filecmp.cmp(tmp_path / "before" / "metrics.json", tmp_path / "after" / "metrics.json", shallow=False)
    assert filecmp.cmp(before / "figures" / "curves_miou.png", after / "figures" / "curves_miou.png", shallow=False)
    assert not filecmp.cmp(before / "figures" / "curves_loss.png", after / "figures" / "curves_loss.png",
                           shallow=False)
    page = (after / "README.md").read_text()
    assert ("logged every 20 iterations, each run smoothed with a centred rolling mean over 5 logs "
            "(100 iterations; fewer at both ends); line = mean over seeds, band = min-max over seeds") in page
    assert "Training losses, pseudo-label weight and throughput: logged every 20 iterations" in page
    assert "Training losses (mean since the previous evaluation)" in (before / "README.md").read_text()
    assert sorted(p.name for p in (after / "figures").iterdir()) == sorted(p.name for p in (before / "figures").iterdir())
    for name in ("curves_loss.png", "curves_loss.svg"):
        assert filecmp.cmp(after / "figures" / name, again / "figures" / name, shallow=False), name


# --------------------------------------------------------------------------------------------------
# slow: a real study

@pytest.mark.slow
def test_a_real_smoke_study_logs_every_log_interval_and_reports_dense_curves(synth_root, tmp_path):
    """`udabench study run` at smoke scale with 6 iterations, evaluations every 3, logs every 2: each
    trial's run holds train/ metrics at 2, 4 and 6 and its evaluations at 3 and 6 (the latest `loss/*`
    = the final evaluation's); the report draws the loss curves from the train/ logs."""
    import yaml

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "method": {"host": "dacs"},
        "data": {p: {"root": str(synth_root)} for p in ("source", "target", "val")}}))
    (tmp_path / "dense_smoke.yaml").write_text(yaml.safe_dump({
        "name": "dense_smoke", "description": "dense curves of two smoke trials", "config": "base.yaml",
        "grid": {"seed": [0, 1]}}))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    res = subprocess.run([str(BIN / "udabench"), "study", "run", str(tmp_path / "dense_smoke.yaml"), "--scale",
                          "smoke", "--root", str(tmp_path), "--num-cpus", "2", "--set", "schedule.iterations=6",
                          "--set", "eval.interval=3", "--set", "log_interval=2"],
                         env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    c = tracking.client(uri)
    runs = tracking.search(uri, tracking.experiment_id(uri, "dense_smoke"))
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        dense = {k for k in run.data.metrics if k.startswith("train/")}
        assert dense == {"train/loss/sup", "train/loss/uda", "train/stat/pseudo_weight", "train/throughput",
                         "train/step_time", "train/lr"}
        for key in dense:
            assert [s for s, _ in _history(c, run.info.run_id, key)] == [2, 4, 6], key
        for key in ("target_miou", "loss/sup", "throughput"):
            assert [s for s, _ in _history(c, run.info.run_id, key)] == [3, 6], key
        assert run.data.metrics["loss/sup"] == _history(c, run.info.run_id, "loss/sup")[-1][1]
    out = tmp_path / "reports"
    assert main(["report", "dense_smoke", "--tracking-uri", uri, "--out", str(out)]) == 0
    page = (out / "dense_smoke" / "README.md").read_text()
    assert "logged every 2 iterations, each run smoothed with a centred rolling mean over 5 logs" in page
    assert "Training losses, pseudo-label weight and throughput: logged" in page
    for name in ("curves_loss.png", "curves_miou.png"):
        assert (out / "dense_smoke" / "figures" / name).read_bytes()[:4] == b"\x89PNG"

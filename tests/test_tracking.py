"""MLflow glue on a real sqlite store: absolute locations, one run per trial (re-opened on retry),
metrics per step, artifacts, failure records, and the finished-hash query that skips done trials."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from harness.study import tracking


def test_default_store_is_absolute_and_the_env_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert tracking.tracking_uri(tmp_path / "sub") == f"sqlite:///{tmp_path.resolve()}/sub/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    assert not tracking.is_local_store("http://127.0.0.1:5999") and tracking.is_local_store(uri)


def test_experiment_artifacts_stay_under_the_project_whatever_the_cwd(tmp_path, monkeypatch):
    root = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # like a Ray trial's working directory
    uri = tracking.default_tracking_uri(root)
    exp = tracking.ensure_experiment(uri, "study-a", root)
    assert tracking.ensure_experiment(uri, "study-a", root) == exp  # idempotent
    c = tracking.client(uri)
    location = c.get_experiment(exp).artifact_location
    assert location == (root.resolve() / "mlruns" / "artifacts" / "study-a").as_uri()
    run = tracking.TrialRun.open(uri, exp, "t_00000", "study-a.smoke.1", "seed=0", tags={"study": "study-a"},
                                 params={"seed": "0"})
    run.finish({"seed": 0}, {"target_miou": 1.0})
    assert (root / "mlruns" / "artifacts" / "study-a" / run.run_id / "artifacts" / "config.yaml").is_file()
    assert list(elsewhere.iterdir()) == []


def test_flatten_gives_dotted_params():
    flat = tracking.flatten({"model": {"arch": "daformer", "options": {}}, "data": {"crop": [64, 64]},
                             "method": {"aux": {"mfm": {"options": {"mask_ratio": 0.4}}}}, "x": None})
    assert flat == {"model.arch": "daformer", "model.options": "{}", "data.crop": "[64, 64]",
                    "method.aux.mfm.options.mask_ratio": "0.4", "x": "null"}


def test_trial_run_is_reopened_by_trial_id_and_records_everything(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, "s", tmp_path)
    tags = {"study": "s", "config_hash": "abc", "axis.seed": "1"}
    params = {f"p{i}": str(i) for i in range(150)}  # more than one log_batch of params
    run = tracking.TrialRun.open(uri, exp, "t_1", "s.smoke.x", "seed=1", tags, params)
    assert not run.resumed
    run.log_metrics({"target_miou": 10.0, "iou/train": math.nan, "loss/source": 0.5}, step=2)
    run.fail("Traceback ...\nRuntimeError: boom")
    c = tracking.client(uri)
    r = c.get_run(run.run_id)
    assert r.info.status == "FAILED" and r.data.tags["error"].endswith("RuntimeError: boom")
    assert [a.path for a in c.list_artifacts(run.run_id)] == ["error.txt"]

    again = tracking.TrialRun.open(uri, exp, "t_1", "s.smoke.x", "seed=1", tags, params)  # a retry
    assert again.resumed and again.run_id == run.run_id
    assert c.get_run(run.run_id).info.status == "RUNNING"
    other = tracking.TrialRun.open(uri, exp, "t_1", "s.smoke.y", "seed=1", tags, params)  # other experiment
    assert other.run_id != run.run_id
    again.log_metrics({"target_miou": 12.5}, step=4)
    again.finish({"seed": 1}, {"target_miou": 12.5, "iou/road": 80.0, "iou/traffic_light": 3.25})
    r = c.get_run(run.run_id)
    assert r.info.status == "FINISHED" and len(r.data.params) == 150
    assert [(m.step, m.value) for m in c.get_metric_history(run.run_id, "target_miou")] == [(2, 10.0), (4, 12.5)]
    assert tracking.best_metric(uri, run.run_id) == 12.5
    assert sorted(a.path for a in c.list_artifacts(run.run_id)) == ["config.yaml", "error.txt", "per_class.csv"]
    table = Path(c.download_artifacts(run.run_id, "per_class.csv", str(tmp_path))).read_text().splitlines()
    assert table[0] == "train_id,class,iou" and len(table) == 20
    assert table[1] == "0,road,80.0000" and table[7] == "6,traffic light,3.2500" and table[2] == "1,sidewalk,"
    assert tracking.finished_hashes(uri, exp) == {"abc"}
    assert set(tracking.runs_by_trial(uri, exp, "s.smoke.x")) == {"t_1"}


def test_three_processes_create_and_fill_one_fresh_store_without_losing_runs(tmp_path):
    """MLflow's first-time table creation fails when two processes race on a fresh sqlite store
    ('duplicate column name'); tracking.client serialises it. Then 3 x 3 runs, none lost."""
    import subprocess
    import sys

    uri = tracking.default_tracking_uri(tmp_path)
    code = ("import sys; from harness.study import tracking\n"
            "exp = tracking.ensure_experiment(sys.argv[1], 's', sys.argv[3])\n"
            "for i in range(3):\n"
            "    r = tracking.TrialRun.open(sys.argv[1], exp, f'{sys.argv[2]}_{i}', 'x', 'n', "
            "{'config_hash': f'{sys.argv[2]}{i}'}, {'a': '1'})\n"
            "    r.log_metrics({'target_miou': float(i)}, step=1); r.finish({}, {})\n")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, name, str(tmp_path)], env=env,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b", "c")]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)
    assert len(tracking.finished_hashes(uri, tracking.experiment_id(uri, "s"))) == 9


@pytest.mark.parametrize("status", ["KILLED", "FAILED"])
def test_mark_failed_sets_status_and_reason(tmp_path, status):
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, "s", tmp_path)
    run = tracking.TrialRun.open(uri, exp, "t", "x", "n", {}, {})
    tracking.mark_failed(uri, run.run_id, "interrupted", status=status)
    r = tracking.client(uri).get_run(run.run_id)
    assert r.info.status == status and r.data.tags["error"] == "interrupted"
    assert tracking.finished_hashes(uri, exp) == set()


def test_git_dirty_means_code_not_the_pipelines_records(tmp_path):
    """dvc.lock and stage outputs change while `dvc repro` runs: they do not make the code dirty."""
    import subprocess

    from harness.study.tracking import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("dvc.lock", "train.py", "reports/gap/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    assert git_state(tmp_path)[1] == "false"
    (tmp_path / "dvc.lock").write_text("b\n")
    (tmp_path / "reports" / "gap" / "README.md").write_text("b\n")
    assert git_state(tmp_path / "reports")[1] == "false"
    (tmp_path / "train.py").write_text("b\n")
    assert git_state(tmp_path)[1] == "true"

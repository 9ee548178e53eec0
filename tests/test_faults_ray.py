"""Fault tests with a real Ray, real training at smoke scale and a real sqlite MLflow store (slow: each
starts Ray at least once and trains a few smoke trials; one to four minutes on two shared cores).

- The study driver is SIGKILLed while a trial is between two evaluations; `udabench study resume`
  finishes the study: the finished trial is kept as it was, the cut one continues from its checkpoint,
  the report's tables equal those of an uninterrupted run of the same study, and no process of either
  driver is left.
- The Ray worker running a trial is SIGKILLed; Tune retries the trial from its checkpoint and it finishes.
- Two studies run at once, by two `udabench study run` processes on one project (one MLflow store,
  created by whichever gets there first): no run is lost.

Already covered elsewhere, not repeated here: a SIGKILLed driver after a finished trial, its orphans
reaped (test_network.py); SIGTERM and Ctrl-C (test_network.py, test_study_run.py); a diverging trial
recorded failed while the rest finish (test_study_run.py::test_a_failing_trial_is_recorded_failed_...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from test_network import cli_env, kill_marked, marked, runs, udabench, wait_for, wait_gone
from test_study_run import GATE, project, ray_local, runs_of  # noqa: F401 - fixtures

from harness.cli import main
from harness.study import tracking
from harness.study.load import load_study

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
CONFIGS = TESTS.parent / "studies" / "configs"
GATED = "test_faults_ray:gated_train"


def gated_train(cfg, on_eval=None, resume=None):
    """The real training. The first seed-1 trial to reach an evaluation while `<gate>/block` exists
    takes the block (renames it to `held`), writes its pid to `<gate>/reached` and waits while `held`
    exists (at most 5 minutes): a test can then kill the driver or this worker at a known point, after
    the evaluation's checkpoint was reported. Runs in Ray workers (tests/ is on their PYTHONPATH)."""
    from harness.engine.training import train

    gate = Path(os.environ.get(GATE, "/nonexistent"))

    def hook(iteration, metrics, folder):
        on_eval(iteration, metrics, folder)
        if cfg.seed != 1:
            return
        try:
            os.rename(gate / "block", gate / "held")
        except OSError:
            return
        (gate / "reached").write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while (gate / "held").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    return train(cfg, on_eval=hook, resume=resume)


def study_file(root: Path, name: str, seeds: list[int], extra: str = "") -> Path:
    (root / "studies").mkdir(exist_ok=True)
    path = root / "studies" / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        description: fault test {name}
        config: {CONFIGS / 'daformer.yaml'}
        grid:
          seed: {seeds}
        """) + extra)
    return path


def by_seed(root: Path, study: str) -> dict[str, object]:
    return {r.data.tags["axis.seed"]: r for r in runs(root, study)}


def report_tables(root: Path, study: str) -> dict[str, pd.DataFrame]:
    """`udabench report` of the study; its tables without what a rerun may change (time, memory, ids)."""
    out = root / "reports"
    env = os.environ.get("MLFLOW_TRACKING_URI")
    assert main(["report", study, "--tracking-uri", tracking.default_tracking_uri(root), "--out", str(out),
                 "--no-figures"]) == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == env  # the report left this process's store alone
    tables = {}
    for csv in sorted((out / study / "tables").glob("*.csv")):
        df = pd.read_csv(csv)
        volatile = [c for c in df.columns if c.startswith(("run_id", "start", "end", "duration", "step_time",
                                                           "throughput", "peak_mem", "tags.", "cost"))
                    or c in ("status", "lr")]
        tables[csv.name] = df.drop(columns=volatile).sort_index(axis=1)
    return tables


# --------------------------------------------------------------------------------------------------

def test_sigkilled_driver_mid_trial_resumes_to_the_table_of_an_uninterrupted_run(project, tmp_path_factory):  # noqa: F811
    gate = tmp_path_factory.mktemp("gate")
    (gate / "block").touch()
    study = study_file(project, "crash", [0, 1], "max_concurrent: 1\n")
    token = uuid.uuid4().hex
    env = cli_env(token, **{GATE: str(gate), "PYTHONPATH": os.pathsep.join(
        p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)})
    driver = ("import sys; from harness.study.runner import run_study; from harness.study.load import load_study\n"
              f"sys.exit(run_study(load_study(sys.argv[1], 'smoke'), sys.argv[2], num_cpus=2, train_fn='{GATED}')"
              ".exit_code)")
    log = project / "driver.log"
    proc = subprocess.Popen([sys.executable, "-c", driver, str(study), str(project)], cwd=project, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (gate / "reached").exists(), 600, "seed 1 held after its first evaluation", proc, log)
        time.sleep(3)  # > the 2 s experiment-state snapshot period (TUNE_GLOBAL_CHECKPOINT_S)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        before = by_seed(project, "crash")
        assert before["0"].info.status == "FINISHED"
        assert before["1"].info.status == "RUNNING"  # cut mid-trial: nobody was left to close it
        assert [m.step for m in tracking.client(tracking.default_tracking_uri(project)).get_metric_history(
            before["1"].info.run_id, "target_miou")] == [2]
        (gate / "held").unlink()

        r = subprocess.run(udabench("study", "resume", str(study), "--root", str(project), "--num-cpus", "2"),
                           cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "crash': 2 finished, 0 failed" in r.stdout, r.stdout[-3000:]
        assert wait_gone(token) == [], "processes of the killed or the resuming driver left running"
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(token)

    after = by_seed(project, "crash")
    assert set(after) == {"0", "1"} and {x.info.status for x in after.values()} == {"FINISHED"}
    assert after["0"].info.run_id == before["0"].info.run_id
    assert after["0"].info.end_time == before["0"].info.end_time  # kept as it was, not re-run
    assert after["1"].info.run_id == before["1"].info.run_id
    assert after["1"].data.tags["resumed_from_checkpoint"] == "true" and after["1"].data.tags["attempt"] == "2"
    client = tracking.client(tracking.default_tracking_uri(project))
    assert [m.step for m in client.get_metric_history(after["1"].info.run_id, "target_miou")] == [2, 4]

    # the same study, uninterrupted, in a fresh project
    other = tmp_path_factory.mktemp("uninterrupted")
    (other / "datasets").mkdir()
    (other / "datasets" / "synthetic").symlink_to((project / "datasets" / "synthetic").resolve())
    same = study_file(other, "crash", [0, 1], "max_concurrent: 1\n")
    token2 = uuid.uuid4().hex
    try:
        r = subprocess.run(udabench("study", "run", str(same), "--scale", "smoke", "--root", str(other),
                                    "--num-cpus", "2"), cwd=other, env=cli_env(token2), capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert wait_gone(token2) == []
    finally:
        kill_marked(token2)
    resumed, uninterrupted = report_tables(project, "crash"), report_tables(other, "crash")
    assert set(resumed) == set(uninterrupted) and "main.csv" in resumed and "trials.csv" in resumed
    for name, table in uninterrupted.items():
        pd.testing.assert_frame_equal(resumed[name], table, check_exact=False, rtol=1e-9, obj=name)
    assert {"target_miou", "iou/road"} <= set(resumed["trials.csv"].columns)
    assert "target_miou:mean" in resumed["main.csv"].columns and len(resumed["trials.csv"]) == 2


def test_killed_ray_worker_retries_the_trial_from_its_checkpoint(ray_local, project):  # noqa: F811
    from harness.study.runner import run_study
    from harness.study.session import _owner_mark, marked_processes

    gate = Path(os.environ[GATE])
    for f in ("reached", "held"):
        (gate / f).unlink(missing_ok=True)
    (gate / "block").touch()
    path = study_file(project, "worker_kill", [1], "max_failures: 1\n")
    killed: dict[str, object] = {}

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 600
        while not (gate / "reached").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = int((gate / "reached").read_text())
        killed["ours"] = pid in marked_processes(_owner_mark())  # a process of the Ray this test started
        killed["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid
        (gate / "held").unlink()

    threading.Thread(target=kill_the_worker, daemon=True).start()
    out = run_study(load_study(path, "smoke"), project, train_fn=GATED)
    assert killed.get("ours") is True and "ray::" in str(killed["cmdline"]), killed
    assert killed["pid"] not in marked_processes()  # gone
    assert (out.finished, out.errored, out.interrupted, out.exit_code) == (1, 0, False, 0)
    [run] = runs_of(project, "worker_kill")
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "2" and run.data.tags["resumed_from_checkpoint"] == "true"
    client = tracking.client(tracking.default_tracking_uri(project))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "target_miou")] == [2, 4]
    assert run.data.metrics["iteration"] == 4


def test_two_studies_at_once_on_one_store_lose_no_runs(project):  # noqa: F811
    token = uuid.uuid4().hex
    studies = {name: study_file(project, name, [0, 1]) for name in ("alpha", "beta")}
    procs = {}
    try:
        for name, path in studies.items():
            procs[name] = subprocess.Popen(
                udabench("study", "run", str(path), "--scale", "smoke", "--root", str(project), "--num-cpus", "1"),
                cwd=project, env=cli_env(token), stdout=open(project / f"{name}.log", "w"), stderr=subprocess.STDOUT)
        codes = {name: p.wait(timeout=900) for name, p in procs.items()}
        logs = {name: (project / f"{name}.log").read_text() for name in procs}
        assert codes == {"alpha": 0, "beta": 0}, {n: logs[n][-3000:] for n in logs}
        assert wait_gone(token) == []
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        kill_marked(token)
    uri = tracking.default_tracking_uri(project)
    for name, path in studies.items():
        found = runs(project, name)
        assert len(found) == 2 and {r.info.status for r in found} == {"FINISHED"}, name
        expected = {t.hash for t in load_study(path, "smoke").trials()}
        assert tracking.finished_hashes(uri, tracking.experiment_id(uri, name)) == expected
        assert all(r.data.tags["study"] == name and "target_miou" in r.data.metrics for r in found)
    assert len(list((project / "ray_results").glob("*.smoke.*/udabench.json"))) == 2
    assert marked(token) == []

"""Resume bookkeeping after a killed study driver (issue 20, class 5), with a real Ray, real training at
smoke scale and a real sqlite MLflow store.

- The driver is frozen (SIGSTOP) while a trial is inside its first evaluation's report, then SIGKILLed:
  the trial's MLflow run holds step 2 and its checkpoint is on disk, but Tune's experiment state never
  heard of it. `udabench study resume` continues that trial from the checkpoint (attempt 2,
  resumed_from_checkpoint true) and no step is logged twice.
- After a driver SIGKILL, `udabench study run` (not `resume`) on the same root leaves no run RUNNING and
  `study status` and the report count each trial once.
- Ray's agents of a SIGKILLed driver end within seconds (the driver's watchdog), not after 60-90 s.
- Fast, without Ray: a re-opened MLflow run never takes a step twice; runs of a dead driver are closed,
  those of a live driver are not; the watchdog ends what a SIGKILLed driver left.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_study_run import GATE, project  # noqa: F401 - fixture


def stalled_train(cfg, on_eval=None, resume=None):
    """The real training. The first seed-1 trial to reach an evaluation while `<gate>/block` exists takes
    the block (renames it to `held`), writes its pid to `<gate>/reached` and waits for `<gate>/go` before
    it logs and reports that evaluation (the test freezes the driver in between, so Tune never processes
    the report); after it, it waits while `held` exists (at most 5 minutes). Runs in Ray workers (tests/
    is on their PYTHONPATH)."""
    from harness.engine.training import train

    gate = Path(os.environ.get(GATE, "/nonexistent"))

    def hook(iteration, metrics, folder):
        if cfg.seed != 1:
            return on_eval(iteration, metrics, folder)
        try:
            os.rename(gate / "block", gate / "held")
        except OSError:
            return on_eval(iteration, metrics, folder)
        (gate / "reached").write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while not (gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        on_eval(iteration, metrics, folder)
        (gate / "reported").touch()
        while (gate / "held").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    return train(cfg, on_eval=hook, resume=resume)


# --------------------------------------------------------------------------------------------------
# fast: no Ray

def test_a_reopened_run_never_takes_a_step_twice(tmp_path):
    from harness.study import tracking

    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, "s", tmp_path)
    first = tracking.TrialRun.open(uri, exp, "t_1", "s.smoke.x", "seed=1", {"study": "s"}, {})
    assert (first.resumed, first.last_step) == (False, -1)
    assert first.log_metrics({"target_miou": 10.0, "iteration": 2.0}, step=2)
    assert first.log_metrics({"target_miou": 12.0, "iteration": 4.0}, step=4)
    # the trial restarts from scratch (no checkpoint it could use): its run holds steps 2 and 4
    again = tracking.TrialRun.open(uri, exp, "t_1", "s.smoke.x", "seed=1", {"study": "s"}, {})
    assert (again.resumed, again.run_id, again.last_step) == (True, first.run_id, 4)
    assert not again.log_metrics({"target_miou": 99.0, "iteration": 2.0}, step=2)
    assert not again.log_metrics({"target_miou": 98.0, "iteration": 4.0}, step=4)
    assert again.log_metrics({"target_miou": 14.0, "iteration": 6.0}, step=6)
    c = tracking.client(uri)
    for key, values in {"target_miou": [10.0, 12.0, 14.0], "iteration": [2.0, 4.0, 6.0]}.items():
        assert [(m.step, m.value) for m in c.get_metric_history(first.run_id, key)] == list(zip([2, 4, 6], values))
    assert c.get_run(first.run_id).data.tags["steps_not_relogged"] == "2,4"


def test_runs_of_a_dead_driver_are_closed_and_only_those(tmp_path, capsys):
    import socket
    import subprocess

    from harness.study import session, tracking
    from harness.study.runner import close_orphaned_runs

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    drivers = {"dead": f"{gone.pid}:{session._start_time(os.getpid())}@{host}",
               "alive": session.driver_mark(), "elsewhere": f"{os.getpid()}:1@not-{host}", "untagged": None}
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, "s", tmp_path)
    runs = {}
    for name, driver in drivers.items():
        tags = {"study": "s", **({"driver": driver} if driver else {})}
        runs[name] = tracking.TrialRun.open(uri, exp, name, "s.smoke.old", name, tags, {}).run_id
    finished = tracking.TrialRun.open(uri, exp, "done", "s.smoke.old", "done", {"driver": drivers["dead"]}, {})
    finished.finish({}, {})

    assert session.driver_alive(drivers["dead"]) is False and session.driver_alive(drivers["alive"]) is True
    assert session.driver_alive(drivers["elsewhere"]) is None
    assert close_orphaned_runs(uri, exp, "s") == 1
    assert "1 run(s) of 's' left RUNNING by a study driver that is gone; marked KILLED: dead" in capsys.readouterr().out
    c = tracking.client(uri)
    status = {name: c.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}
    error = c.get_run(runs["dead"]).data.tags["error"]
    assert error.startswith(f"killed: its study driver ({drivers['dead']}) ended without closing this run")
    assert "`udabench study resume` continues Tune experiment s.smoke.old" in error
    assert c.get_run(finished.run_id).info.status == "FINISHED"
    assert close_orphaned_runs(uri, exp, "s") == 0  # nothing left to close


WATCHED_DRIVER = """
import os, subprocess, sys, time
from harness.study import session
mark = session._owner_mark()
dog = session._start_watchdog(mark)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
child = subprocess.Popen([sys.executable, "-c", stubborn], env={**os.environ, session.OWNER_ENV: mark})
print(child.pid, dog.pid, flush=True)
time.sleep(300)
"""


def test_the_watchdog_ends_at_once_what_a_sigkilled_driver_left():
    """A Ray we start comes with a watchdog: the processes carrying a SIGKILLed driver's mark (Ray's agents
    would stay 60 s) end within seconds, one that ignores SIGTERM too; while the driver lives, nothing."""
    import signal
    import subprocess
    import sys
    import uuid

    from test_network import cli_env, kill_marked, marked

    token = uuid.uuid4().hex
    driver = subprocess.Popen([sys.executable, "-c", WATCHED_DRIVER], env=cli_env(token), stdout=subprocess.PIPE,
                              text=True)
    try:
        child, dog = map(int, driver.stdout.readline().split())
        time.sleep(1.5)
        assert {child, dog} <= set(marked(token))  # the driver lives: its processes are left alone
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        started = time.monotonic()
        while marked(token) and time.monotonic() - started < 10:
            time.sleep(0.1)
        took = time.monotonic() - started
        assert marked(token) == [], "left after a SIGKILLed driver"
        assert took < 4, took  # 1 s of SIGTERM grace, then SIGKILL
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_marked(token)


# --------------------------------------------------------------------------------------------------
# slow: a real Ray, the real CLI

def _driver(root: Path, study: Path, env: dict[str, str], train_fn: str):
    import subprocess
    import sys

    code = ("import sys; from harness.env import offline; offline(); from harness.study.runner import run_study; "
            "from harness.study.load import load_study\n"
            f"sys.exit(run_study(load_study(sys.argv[1], 'smoke'), sys.argv[2], num_cpus=2, train_fn='{train_fn}')"
            ".exit_code)")
    log = root / "driver.log"
    proc = subprocess.Popen([sys.executable, "-c", code, str(study), str(root)], cwd=root, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, log


def _sigkill(proc) -> None:
    import signal

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _steps(client, run) -> dict[str, list[int]]:
    return {key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}


@pytest.mark.slow
def test_driver_killed_before_tune_heard_of_a_checkpoint_resumes_from_it_logging_no_step_twice(
        project, tmp_path_factory):  # noqa: F811
    """The driver is frozen while seed 1 reports its first evaluation (the run holds step 2, the worker
    wrote checkpoint_000000), then SIGKILLed: Tune's experiment state never recorded that checkpoint.
    Ray's processes end within seconds; `udabench study resume` continues the trial from the checkpoint
    in its folder and logs every step once."""
    import signal
    import subprocess
    import uuid

    from test_faults_ray import by_seed, study_file
    from test_network import cli_env, kill_marked, udabench, wait_for, wait_gone

    from harness.engine import checkpoint as ckpt
    from harness.study import tracking

    gate = tmp_path_factory.mktemp("gate")
    (gate / "block").touch()
    study = study_file(project, "frozen", [1])
    token = uuid.uuid4().hex
    tests = str(Path(__file__).resolve().parent)
    env = cli_env(token, **{GATE: str(gate), "PYTHONPATH": os.pathsep.join(
        p for p in (tests, os.environ.get("PYTHONPATH")) if p)})
    client = tracking.client(tracking.default_tracking_uri(project))
    proc, log = _driver(project, study, env, "test_resume_bookkeeping:stalled_train")
    try:
        wait_for(lambda: (gate / "reached").exists(), 600, "seed 1 at its first evaluation", proc, log)
        os.kill(proc.pid, signal.SIGSTOP)  # the driver hears of no report from now on
        (gate / "go").touch()

        def logged():
            run = by_seed(project, "frozen").get("1")
            return run if run is not None and _steps(client, run).get("target_miou") == [2] else None

        run = wait_for(logged, 120, "step 2 in the trial's MLflow run")
        [trial] = project.glob(f"ray_results/frozen.smoke.*/trial_{run.data.tags['trial_id']}")
        wait_for(lambda: ckpt.load(trial / "checkpoint_000000")["iteration"] == 2, 60, "the checkpoint on disk")
        states = sorted(trial.parent.glob("experiment_state-*.json"))
        assert states and "checkpoint_000000" not in states[-1].read_text()  # Tune never recorded it
        assert run.data.tags["driver"].startswith(f"{proc.pid}:")
        _sigkill(proc)
        killed = time.monotonic()
        assert wait_gone(token, timeout=15) == [], "Ray processes of the SIGKILLed driver left running"
        print(f"\nRay processes of the SIGKILLed driver gone after {time.monotonic() - killed:.1f} s")
        assert by_seed(project, "frozen")["1"].info.status == "RUNNING"  # nobody closed it: the test's premise
        (gate / "held").unlink()

        r = subprocess.run(udabench("study", "resume", str(study), "--root", str(project), "--num-cpus", "2"),
                           cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "frozen': 1 finished, 0 failed" in r.stdout, r.stdout[-3000:]
        assert wait_gone(token) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(token)

    after = by_seed(project, "frozen")["1"]
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert after.data.tags["attempt"] == "2" and after.data.tags["resumed_from_checkpoint"] == "true"
    assert "steps_not_relogged" not in after.data.tags  # it continued from step 2: nothing computed twice
    steps = _steps(client, after)
    assert steps["target_miou"] == [2, 4] and steps["iteration"] == [2, 4]
    assert {key: s for key, s in steps.items() if len(s) != len(set(s))} == {}  # no step logged twice


@pytest.mark.slow
def test_study_run_after_a_sigkilled_driver_leaves_no_run_running_and_counts_each_trial_once(
        project, tmp_path_factory):  # noqa: F811
    """`udabench study run` (not `resume`) on the same root after a driver SIGKILL: the killed trial runs
    again in a new run, the old one is closed (KILLED, saying why), nothing stays RUNNING, and `study
    status` and the report count two trials."""
    import json
    import subprocess
    import uuid

    import pandas as pd
    from test_faults_ray import GATED, by_seed, study_file
    from test_network import cli_env, kill_marked, runs, udabench, wait_for, wait_gone

    from harness.cli import main

    gate = tmp_path_factory.mktemp("gate")
    (gate / "block").touch()
    study = study_file(project, "again", [0, 1], "max_concurrent: 1\n")
    token = uuid.uuid4().hex
    tests = str(Path(__file__).resolve().parent)
    env = cli_env(token, **{GATE: str(gate), "PYTHONPATH": os.pathsep.join(
        p for p in (tests, os.environ.get("PYTHONPATH")) if p)})
    proc, log = _driver(project, study, env, GATED)
    try:
        wait_for(lambda: (gate / "reached").exists(), 600, "seed 1 held after its first evaluation", proc, log)
        _sigkill(proc)
        assert wait_gone(token, timeout=15) == []
        before = by_seed(project, "again")
        assert before["1"].info.status == "RUNNING"
        (gate / "held").unlink()

        r = subprocess.run(udabench("study", "run", str(study), "--scale", "smoke", "--root", str(project),
                                    "--num-cpus", "2"), cwd=project, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "1 run(s) of 'again' left RUNNING by a study driver that is gone; marked KILLED: seed=1" in r.stdout
        assert "again': 1 finished, 0 failed, 1 skipped" in r.stdout, r.stdout[-3000:]
        assert wait_gone(token) == []
        s = subprocess.run(udabench("study", "status", str(study), "--scale", "smoke", "--root", str(project),
                                    "--format", "json"), cwd=project, env=env, capture_output=True, text=True,
                           timeout=300)
        assert s.returncode == 0, s.stderr[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(token)

    found = runs(project, "again")
    assert sorted(x.info.status for x in found) == ["FINISHED", "FINISHED", "KILLED"]
    [old] = [x for x in found if x.info.status == "KILLED"]
    assert old.info.run_id == before["1"].info.run_id
    assert old.data.tags["error"].startswith(f"killed: its study driver ({before['1'].data.tags['driver']})")
    finished = {x.info.run_id[:8] for x in found if x.info.status == "FINISHED"}
    rows = json.loads(s.stdout)
    assert [(row["seed"], row["state"]) for row in rows] == [(0, "FINISHED"), (1, "FINISHED")]
    assert {row["run_id"] for row in rows} == finished
    out = project / "reports"
    assert main(["report", "again", "--tracking-uri", f"sqlite:///{project}/mlruns/mlflow.db", "--out", str(out),
                 "--no-figures"]) == 0
    trials = pd.read_csv(out / "again" / "tables" / "trials.csv")
    assert len(trials) == 2 and {str(x)[:8] for x in trials["run_id"]} == finished

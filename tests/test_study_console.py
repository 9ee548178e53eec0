"""The console of a running study (harness/study/console.py) and the trials' priority.

Fast: the engine's real progress lines parse; the console's event lines, summaries and in-place table
(fed as Tune's callback feeds it, on a fake clock); the ETA of trials and of a study; `study status`
showing a running trial's progress from its output file; `--nice` out of range refused.
Real Ray (the CLI in a subprocess, smoke scale): the console shows events, not Ray's status block or
the workers' lines; those go to files of the experiment folder; the trials run at the driver's
niceness (read inside the trial and from /proc while it runs); `--nice 7 --verbose`: 7 steps lower, and
Ray's output back on the console.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from test_network import cli_env, kill_marked, marked, udabench, wait_gone

from harness.cli import main
from harness.study import console as live
from harness.study import tracking

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "studies" / "configs"


# ---------------------------------------------------------------------------------------------------
# what the engine writes, parsed


def test_the_engines_own_progress_lines_parse(synth_root, tmp_path, capfd):
    """A real smoke run without a terminal writes a progress line per tenth of the schedule and one per
    evaluation; parse_line reads every one of them (a change of the engine's format fails here)."""
    from harness.engine.resolve import load_config
    from harness.engine.training import train
    from harness.scales import scale_overlay

    data = [f"data.{s}.root={synth_root}" for s in ("source", "target", "val")]
    cfg = load_config(None, [*data, f"output={tmp_path}/run", "threads=1"],
                      extra=scale_overlay("smoke", "deeplabv2"))
    final = train(cfg)  # progress=None and stderr is not a terminal here: plain lines
    captured = capfd.readouterr()  # progress on stderr, evaluations on stdout (tqdm.write): one file in a trial
    lines = [ln for ln in (captured.err + captured.out).splitlines() if ln.startswith(f"[{cfg.name}]")]
    parsed = [live.parse_line(ln) for ln in lines]
    assert lines and None not in parsed, lines
    total = cfg.schedule.iterations
    progress = [p for p in parsed if "loss" in p]
    evals = [p for p in parsed if "target_miou" in p]
    assert [p["iteration"] for p in progress] == list(range(1, total + 1))  # smoke: 4 steps, one line each
    assert all(p["iterations"] == total and p["img_s"] > 0 and p["loss"] > 0 for p in progress)
    assert [p["iteration"] for p in evals] == list(range(cfg.eval.interval, total + 1, cfg.eval.interval))
    assert evals[-1]["target_miou"] == pytest.approx(final["target_miou"], abs=0.005)
    assert live.parse_line("Checkpoint successfully created at: Checkpoint(...)") is None


# ---------------------------------------------------------------------------------------------------
# the console, fed as Tune's callback feeds it


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def progress_line(name: str, it: int, total: int, loss: float, img_s: float) -> str:
    return f"[{name}] {it}/{total} ({100 * it // total}%) loss {loss:.3f}, {img_s:.1f} img/s\n"


def console(tmp_path, tty: bool, verbose: bool = False, slots: int = 2):
    out, clock = io.StringIO(), Clock()
    c = live.Console("demo", tmp_path / "exp", slots=slots, verbose=verbose, stream=out, tty=tty,
                     clock=clock, describe=lambda point: (100, 4))
    return c, out, clock


A, B, C = {"arch": "deeplabv2", "seed": 0}, {"arch": "daformer", "seed": 0}, {"arch": "daformer", "seed": 1}


def test_in_a_log_one_line_per_event_and_a_summary_every_half_minute(tmp_path):
    c, out, clock = console(tmp_path, tty=False)
    c.tick([("a", A, "PENDING", {}), ("b", B, "PENDING", {}), ("c", C, "PENDING", {})])
    c.started("a", A)
    c.started("b", B)
    out_a = live.output_path(tmp_path / "exp", "a")
    out_a.parent.mkdir(parents=True)
    out_a.write_text("--- udabench: trial a\n" + progress_line("demo/a", 40, 100, 1.5, 8.0) + "[demo/a] 41/1")
    clock.now += 10
    c.tick([("a", A, "RUNNING", {}), ("b", B, "RUNNING", {})])  # 10 s after the first summary: none
    c.result("a", A, {"iteration": 50, "target_miou": 12.346, "loss/decode": 1.0, "loss/mfm": 0.25,
                      "throughput": 8.0})
    clock.now += 25
    c.tick([("a", A, "RUNNING", {}), ("b", B, "RUNNING", {})])
    c.finished("a", A)
    c.failed("b", B, "Traceback ...\nRuntimeError: boom\n")
    c.close()
    lines = out.getvalue().splitlines()
    assert not any("\x1b" in ln for ln in lines)  # no terminal: no cursor movement
    events = [ln.split()[1] for ln in lines if ln.split()[1] != "study"]
    assert events == ["started", "started", "evaluated", "finished", "failed"]
    summaries = [ln for ln in lines if " study 'demo': " in ln]
    assert len(summaries) == 3  # at the first tick, 35 s later, and the final one (once)
    assert "2 running, 1 pending (arch=deeplabv2,seed=0 50/100; arch=daformer,seed=0 0/100)" in summaries[1]
    assert "ETA of the study" not in summaries[1]  # b has no speed yet: unknown, not made up
    [evaluated] = [ln for ln in lines if " evaluated " in ln]
    assert evaluated.endswith("arch=deeplabv2,seed=0: iteration 50/100, target mIoU 12.35 (best 12.35), "
                              "loss 1.250, 8.0 img/s")
    [failed] = [ln for ln in lines if " failed " in ln]
    assert f"RuntimeError: boom (its output: {out_a.parent.parent / 'trial_b' / 'output.log'})" in failed
    # c: 100 iterations at the 0.5 s an iteration seen (8 img/s, 4 images a step)
    assert summaries[-1].endswith("study 'demo': 1 finished, 1 failed, 1 pending; ETA of the study 50s")
    assert (tmp_path / "exp" / live.CONSOLE_LOG).read_text().splitlines() == lines


def test_on_a_terminal_the_table_is_redrawn_in_place_with_events_above_it(tmp_path):
    c, out, clock = console(tmp_path, tty=True)
    c.started("a", A)
    path = live.output_path(tmp_path / "exp", "a")
    path.parent.mkdir(parents=True)
    path.write_text(progress_line("demo/a", 30, 100, 2.0, 4.0))
    for _ in range(3):
        clock.now += 1.5
        c.tick([("a", A, "RUNNING", {}), ("b", B, "PENDING", {})])
    text = out.getvalue()
    # every redraw first moves up over the table it drew and clears it: the event's table (header, a row,
    # the summary: 3 lines), then three ticks' (4 lines: b appeared)
    assert re.findall(r"\x1b\[(\d+)F\x1b\[J", text) == ["3", "4", "4"]
    last = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert last[0].split() == ["arch", "seed", "state", "iteration", "loss", "img_s", "time_s", "eta_s"]
    assert last[1].split() == ["deeplabv2", "0", "RUNNING", "30/100", "2.000", "4.0", "4.5", "1m10s"]
    assert last[2].split() == ["daformer", "0", "pending", "-", "-", "-", "-", "-"]
    # a: 70 iterations at 1 s (4 img/s, 4 images a step) -> 70 s; b: 100 iterations at the 1 s an
    # iteration seen, on the free slot -> 100 s
    assert last[3] == "study 'demo': 1 running, 1 pending; ETA of the study 1m40s"
    clock.now += 0.2
    c.tick([("a", A, "RUNNING", {})])  # within a second of the last redraw: nothing drawn
    assert out.getvalue() == text
    c.finished("a", A)  # an event: the table erased, the line written, the table drawn again below it
    after = out.getvalue()[len(text):]
    assert after.startswith("\x1b[4F\x1b[J") and after.splitlines()[0].endswith(
        "finished  arch=deeplabv2,seed=0: best target mIoU -, 5s")


def test_verbose_echoes_each_trials_output_and_draws_no_table(tmp_path):
    c, out, clock = console(tmp_path, tty=True, verbose=True)
    assert not c.tty
    path = live.output_path(tmp_path / "exp", "a")
    path.parent.mkdir(parents=True)
    path.write_text("an earlier attempt's line\n")
    c.started("a", A)  # what the file held before is an earlier attempt's
    with open(path, "a") as f:
        f.write("hello from the worker\n" + progress_line("demo/a", 10, 100, 3.0, 2.0) + "half a li")
    c.tick([("a", A, "RUNNING", {})])
    lines = out.getvalue().splitlines()
    assert "(arch=deeplabv2,seed=0) hello from the worker" in lines
    assert "earlier" not in out.getvalue() and "half a li" not in out.getvalue()
    assert c.trials["a"].iteration == 10
    with open(path, "a") as f:
        f.write("ne\n")
    c.tick([("a", A, "RUNNING", {})], force=True)
    assert "(arch=deeplabv2,seed=0) half a line" in out.getvalue().splitlines()


def test_a_retried_trial_shows_the_progress_of_its_new_attempt(tmp_path):
    c, out, clock = console(tmp_path, tty=False)
    c.started("a", A)
    c.result("a", A, {"iteration": 60, "target_miou": 10.0, "throughput": 5.0})
    c.failed("a", A, "boom", retrying=True)
    c.started("a", A, resumed=True, at=50)  # its checkpoint was at 50
    path = live.output_path(tmp_path / "exp", "a")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(progress_line("demo/a", 55, 100, 1.0, 5.0))
    c.tick([("a", A, "RUNNING", {})], force=True)
    assert c.trials["a"].iteration == 55 and c.trials["a"].best == 10.0
    text = out.getvalue()
    assert "retrying from its last checkpoint" in text and "resumed   arch=deeplabv2,seed=0: from iteration 50" in text


def test_a_failing_console_never_stops_a_study_and_pickles_to_an_inert_callback(tmp_path, caplog):
    """Tune calls the callback in its loop (an exception there would end the study) and pickles it with
    the experiment (tuner.pkl)."""
    import pickle

    c, out, clock = console(tmp_path, tty=False)
    cb = live.callback(c)

    class Trial:
        trial_id, config, checkpoint, last_result, status = "a", {"point": A}, None, {}, "RUNNING"

    cb.on_trial_start(0, [Trial()], Trial())
    assert "started   arch=deeplabv2,seed=0" in out.getvalue()
    c.result = lambda *a, **k: 1 / 0  # a bug of the console's
    cb.on_trial_result(0, [Trial()], Trial(), {"iteration": 2})
    assert cb.console is None and "the console stops" in caplog.text
    cb.on_step_end(0, [Trial()])  # from now on: nothing
    restored = pickle.loads(pickle.dumps(live.callback(c)))
    assert restored.console is None
    restored.on_trial_start(0, [Trial()], Trial())


def test_study_eta_places_pending_trials_on_the_free_slots():
    def t(state, it=None, img_s=None, total=100):
        return live.TrialState({}, state=state, iteration=it, iterations=total, images_per_step=4, img_s=img_s)

    # running: 50 s and 10 s left (1 s and 0.5 s an iteration); 2 pending of 100 iterations at the mean
    # seconds an iteration seen (1, 0.5 and 2): the first after the 10-s trial, the second after the 50-s one
    trials = [t("RUNNING", 50, 4.0), t("RUNNING", 80, 8.0), t("pending"), t("pending"), t("FINISHED", 100, 2.0)]
    mean = (1.0 + 0.5 + 2.0) / 3
    assert live.study_eta(trials, slots=2) == pytest.approx(max(10 + 100 * mean, 50 + 100 * mean))
    assert live.study_eta(trials[:2], slots=2) == pytest.approx(50)
    assert live.study_eta([t("pending")], slots=1) is None  # no speed seen yet
    assert live.study_eta([t("FINISHED", 100, 2.0)], slots=1, unsampled=2) == pytest.approx(2 * 200)
    assert live.study_eta([t("RUNNING", 10, None)], slots=1) is None


def test_format_table_leaves_out_empty_columns_and_cuts_long_lines():
    rows = [live.TrialState({"seed": 0}, state="FINISHED", best=12.346, time_s=3.0).row(),
            live.TrialState({"seed": 1}).row()]
    lines = live.format_table(rows)
    assert lines[0].split() == ["seed", "state", "best_target_miou", "time_s"]
    assert lines[1].split() == ["0", "FINISHED", "12.35", "3"] and lines[2].split() == ["1", "pending", "-", "-"]
    assert all(len(ln) <= 20 for ln in live.format_table(rows, width=20))


# ---------------------------------------------------------------------------------------------------
# `study status` of a study running elsewhere


def test_status_shows_a_running_trials_progress_from_its_output_file(tmp_path, capsys, monkeypatch):
    from harness.study.load import load_study

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "st.yaml"
    path.write_text(textwrap.dedent(f"""
        description: status of a running study
        config: {CONFIGS}/deeplabv2.yaml
        grid: {{seed: [0, 1]}}
        """))
    study = load_study(path, "smoke")
    t0, t1 = study.trials()
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, study.name, tmp_path)
    tags = {"study": study.name, "scale": "smoke"}
    done = tracking.TrialRun.open(uri, exp, "t0", "st.smoke.x", t0.name, {**tags, "config_hash": t0.hash}, {})
    done.log_metrics({"target_miou": 4.0, "iteration": 4.0, "loss/decode": 2.5, "throughput": 3.0}, 4)
    done.finish({}, {})
    tracking.TrialRun.open(uri, exp, "t1", "st.smoke.x", t1.name, {**tags, "config_hash": t1.hash}, {})
    out = live.output_path(tmp_path / "ray_results" / "st.smoke.x", "t1")
    out.parent.mkdir(parents=True)
    total, per_step = t1.config.schedule.iterations, 2 * t1.config.data.batch_size
    out.write_text("--- udabench: trial t1 (an earlier attempt)\n" + progress_line(t1.config.name, 3, total, 9.0, 1.0)
                   + "--- udabench: trial t1 (this attempt)\n" + progress_line(t1.config.name, 1, total, 2.0, 4.0))

    assert main(["study", "status", str(path), "--scale", "smoke", "--root", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["seed"], r["state"], r["iteration"], r["loss"], r["img_s"]) for r in rows] == [
        (0, "FINISHED", 4, 2.5, 3.0), (1, "RUNNING", 1, 2.0, 4.0)]
    assert rows[1]["eta_s"] == pytest.approx((total - 1) * per_step / 4.0)
    assert rows[0]["eta_s"] is None and rows[0]["best_target_miou"] == 4.0
    assert main(["study", "status", str(path), "--scale", "smoke", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"study 'st' at scale 'smoke': 2 trial(s); 1 running, 1 finished; ETA of the study "
                        f"{live.fmt_duration((total - 1) * per_step / 4.0)}")
    assert lines[1].split() == ["seed", "state", "iteration", "loss", "best_target_miou", "img_s", "time_s", "eta_s",
                                "run_id"]
    assert lines[3].split()[:4] == ["1", "RUNNING", f"1/{total}", "2.000"]


@pytest.mark.parametrize("value", ["-1", "20"])
def test_nice_out_of_range_is_a_usage_error(tmp_path, capsys, value):
    assert main(["study", "run", str(REPO / "studies" / "demo.yaml"), "--scale", "smoke", "--root", str(tmp_path),
                 f"--nice={value}"]) == 2
    assert "--nice: expected an integer from 0" in capsys.readouterr().err
    assert not (tmp_path / "ray_results").exists()


# ---------------------------------------------------------------------------------------------------
# real Ray: the CLI in a subprocess


def _project(tmp_path: Path, synth_root: Path, seeds: list[int]) -> Path:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "synthetic").symlink_to(synth_root)
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "quiet.yaml"
    path.write_text(textwrap.dedent(f"""
        description: the console of a real study
        config: {CONFIGS}/deeplabv2.yaml
        grid: {{seed: {seeds}}}
        """))
    return path


def _run(project: Path, study: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict[int, set[int]]]:
    """`udabench study run` at smoke scale; meanwhile the niceness of every Ray trial process it started
    (title ray::ImplicitFunc..., found by the run's mark in /proc) is read."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen(udabench("study", "run", str(study), "--scale", "smoke", "--root", str(project),
                                     "--num-cpus", "2", *flags), cwd=project, env=cli_env(token),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, set[int]] = {}
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in marked(token):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
                except (OSError, IndexError, ValueError):
                    continue
                if title.startswith("ray::ImplicitFunc"):
                    seen.setdefault(pid, set()).add(nice)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(token)
    assert wait_gone(token) == []
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def _experiment(project: Path) -> Path:
    [exp] = [p for p in (project / "ray_results").iterdir() if p.name.startswith("quiet.smoke.")]
    return exp


def _trial_niceness(exp: Path) -> list[int]:
    """The niceness each trial process read of itself when it started (the first line of its output)."""
    return [int(re.search(r"niceness (-?\d+)", p.read_text()).group(1))
            for p in sorted(exp.glob(f"trial_*/{live.OUTPUT_FILE}"))]


def test_a_real_study_prints_its_events_runs_at_the_drivers_priority_and_files_rays_output(tmp_path, synth_root):
    study = _project(tmp_path, synth_root, [0, 1])
    r, seen = _run(tmp_path, study)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    driver = os.nice(0)  # the subprocess inherited this niceness
    exp = _experiment(tmp_path)
    assert _trial_niceness(exp) == [driver, driver]  # read inside each trial (Ray alone: driver + 15)
    assert seen and all(n == {driver} for n in seen.values()), seen  # and from /proc while they ran

    out = r.stdout + r.stderr
    assert "== Status ==" not in out and "pid=" not in out and "RAY_DEDUP_LOGS" not in out
    assert "Checkpoint successfully created" not in out and "loss" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith(f"udabench: Ray's and the trials' output: {exp / live.RAY_LOG}")  # said first
    events = [ln.split()[1] for ln in lines if re.match(r"\d\d:\d\d:\d\d (started|evaluated|finished) ", ln)]
    assert sorted(events) == sorted(["started"] * 2 + ["evaluated"] * 4 + ["finished"] * 2)  # smoke: 2 evals
    # every other line: the two first lines, a summary line (every 30 s), the closing report
    rest = [ln for ln in lines[2:] if not re.match(r"\d\d:\d\d:\d\d (started|evaluated|finished|study 'quiet': )", ln)]
    assert len(rest) == 1 and rest[0].startswith("udabench: study 'quiet': 2 finished"), r.stdout
    for f in exp.glob(f"trial_*/{live.OUTPUT_FILE}"):  # each trial's own output, in full
        text = f.read_text()
        assert "4/4 (100%) loss" in text and "target mIoU" in text and "Checkpoint successfully created" in text
    assert (exp / live.RAY_LOG).is_file() and (exp / live.SESSION_LINK / "raylet.out").is_file()
    assert (exp / live.CONSOLE_LOG).read_text().splitlines() == lines[:-1]  # all but the closing report


@pytest.mark.slow
def test_nice_and_verbose_lower_the_trials_and_bring_rays_output_back(tmp_path, synth_root):
    study = _project(tmp_path, synth_root, [0])
    r, seen = _run(tmp_path, study, "--nice", "7", "--verbose")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = min(19, os.nice(0) + 7)
    assert _trial_niceness(_experiment(tmp_path)) == [want]
    assert seen and all(n == {want} for n in seen.values()), seen
    assert "== Status ==" in r.stdout  # Ray Tune's own status block
    assert re.search(r"^\(seed=0\) \[quiet/seed=0\] 4/4 \(100%\) loss ", r.stdout, re.M)  # the trial's lines
    assert "trials at niceness +7" in r.stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

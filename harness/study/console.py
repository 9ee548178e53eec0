"""The console of a running study: one view of its trials instead of Ray's output.

What a study prints while it runs (`udabench study run` / `study resume`, `make demo`):
- on a terminal (stdout is a tty): a table of the study's trials (axes, state, iteration, loss, best target
  mIoU so far, throughput, time, ETA of each trial) and a line with the ETA of the study, redrawn in place
  at most once a second; the trials' events (started, evaluated, finished, failed, resumed) scroll above it;
- elsewhere (a log file, CI): one line per trial event and a summary line every `SUMMARY_EVERY` seconds.
The same lines also go to `<experiment>/console.log`.

Ray's and the trials' own output goes to files in the study's Tune experiment folder
(`<root>/ray_results/<study>.<scale>.<time>/`): each trial's stdout and stderr, at the file-descriptor
level (C++ and CUDA messages too), to `trial_<id>/output.log` (`trainable` below, appended to across
retries and resumes); the driver's Ray, Tune and MLflow log records and Python warnings to `ray.log`; and
`ray_session` links the folder of the Ray session's own logs (raylet, GCS, workers). `--verbose` brings
Ray's status block, its log records and every trial's output lines (prefixed with the trial) back to
the console, as event lines, with no table redrawn.

Between evaluations a trial reports nothing to Tune; its progress (iteration, loss, img/s) is read from
the lines the engine writes to its output file (`parse_line`: the formats of
`harness.engine.training.Trainer.run`; tests/test_study_console.py parses a real run's output).
`udabench study status` builds the same rows (`TrialState.row`) from the MLflow store and these output
files, for a study running in another terminal.

ETA of a trial: its remaining iterations at its current speed (training steps only: evaluations add to
it). ETA of the study: the running trials' ETAs and the pending trials (each its iterations at the mean
seconds per iteration seen so far) placed on the free slots, first come first served.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from harness.study.trainable import TrialSpec, trial_dirname
from harness.study.trials import fmt_value, point_name

OUTPUT_FILE = "output.log"  # a trial's stdout + stderr, in its trial folder
RAY_LOG = "ray.log"  # the driver's Ray/Tune/MLflow log records and warnings, in the experiment folder
CONSOLE_LOG = "console.log"  # the console's event and summary lines, in the experiment folder
SESSION_LINK = "ray_session_logs"  # -> the Ray session's logs folder (raylet, GCS, workers)
SUMMARY_EVERY = 30.0  # seconds between summary lines (not on a terminal)
REDRAW_EVERY = 1.0  # seconds between redraws of the table (on a terminal)
QUIET_LOGGERS = ("ray", "mlflow", "py.warnings", "filelock")

# The engine's progress lines (harness/engine/training.py, Trainer.run), as a trial writes them:
#   [demo/model.arch=daformer,seed=0] 120/300 (40%) loss 1.234, 8.1 img/s
#   [demo/model.arch=daformer,seed=0] iteration 300/300: target mIoU 12.34
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|nan|inf)"
PROGRESS_LINE = re.compile(rf"^\[.*\] (?P<it>\d+)/(?P<total>\d+) \(\d+%\) loss (?P<loss>{_NUM}), "
                           rf"(?P<img_s>{_NUM}) img/s\s*$")
EVAL_LINE = re.compile(rf"^\[.*\] iteration (?P<it>\d+)/(?P<total>\d+): target mIoU (?P<miou>{_NUM})\s*$")


def parse_line(line: str) -> dict[str, float] | None:
    """The numbers of one engine progress or evaluation line; None for any other line."""
    if m := PROGRESS_LINE.match(line):
        return {"iteration": int(m["it"]), "iterations": int(m["total"]), "loss": float(m["loss"]),
                "img_s": float(m["img_s"])}
    if m := EVAL_LINE.match(line):
        return {"iteration": int(m["it"]), "iterations": int(m["total"]), "target_miou": float(m["miou"])}
    return None


def output_path(experiment: str | Path, trial_id: str) -> Path:
    """Where a trial's stdout and stderr go."""
    return Path(experiment) / trial_dirname(trial_id) / OUTPUT_FILE


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# ---------------------------------------------------------------------------------------------------
# a trial's state and the table


@dataclass
class TrialState:
    """What the console and `study status` know of one trial."""

    point: dict[str, Any]
    state: str = "pending"  # pending | RUNNING | FINISHED | FAILED | KILLED (+ " (other data)")
    iteration: int | None = None
    iterations: int | None = None  # the schedule's
    images_per_step: int = 2  # source + target batch
    loss: float | None = None
    target_miou: float | None = None  # the latest evaluation
    best: float | None = None  # the best evaluation so far
    img_s: float | None = None
    started: float | None = None  # wall clock, this attempt
    time_s: float | None = None  # run time so far (or in all, once ended)
    run_id: str = ""

    @property
    def name(self) -> str:
        return point_name(self.point)

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    def update(self, values: dict[str, float]) -> None:
        """Take an evaluation's metrics or a progress line's numbers (never going back in iterations)."""
        it = values.get("iteration")
        if it is not None and self.iteration is not None and it < self.iteration:
            return
        if it is not None:
            self.iteration = int(it)
        if values.get("iterations"):
            self.iterations = int(values["iterations"])
        for key in ("loss", "img_s"):
            if values.get(key) is not None and math.isfinite(values[key]):
                setattr(self, key, float(values[key]))
        if (miou := values.get("target_miou")) is not None and math.isfinite(miou):
            self.target_miou = float(miou)
            self.best = miou if self.best is None else max(self.best, miou)

    def seconds_per_iteration(self) -> float | None:
        return self.images_per_step / self.img_s if self.img_s else None

    def eta_s(self) -> float | None:
        """Seconds to the end of the schedule at the current speed (running trials only)."""
        spi = self.seconds_per_iteration()
        if not self.running or spi is None or self.iteration is None or self.iterations is None:
            return None
        return max(0, self.iterations - self.iteration) * spi

    def row(self) -> dict[str, Any]:
        """One row of the table (also `study status --format json|csv`)."""
        return {**self.point, "state": self.state, "iteration": self.iteration, "iterations": self.iterations,
                "loss": None if self.loss is None else round(self.loss, 4),
                "best_target_miou": None if self.best is None else round(self.best, 2),
                "img_s": None if self.img_s is None else round(self.img_s, 2),
                "time_s": None if self.time_s is None else round(self.time_s, 1),
                "eta_s": None if (eta := self.eta_s()) is None else round(eta, 1), "run_id": self.run_id}


def study_eta(trials: list[TrialState], slots: int, unsampled: int = 0) -> float | None:
    """Seconds until every trial has ended: the running trials' ETAs and the pending ones (plus
    `unsampled` trials a searcher has not drawn yet) on `slots` slots, in order; None when unknown."""
    spis = [s for t in trials if (s := t.seconds_per_iteration()) is not None]
    mean_spi = sum(spis) / len(spis) if spis else None
    ends = [t.eta_s() for t in trials if t.running]
    if any(e is None for e in ends):
        return None
    pending = [t for t in trials if t.state == "pending"]
    if not pending and not unsampled:
        return max(ends, default=0.0)
    if mean_spi is None:
        return None
    known = [t.iterations for t in trials if t.iterations]
    costs = [mean_spi * (t.iterations or (max(known) if known else math.nan)) for t in pending]
    costs += [mean_spi * max(known, default=math.nan)] * unsampled
    slot_ends = sorted(ends) + [0.0] * max(0, slots - len(ends))
    slot_ends = slot_ends[:max(slots, len(ends))] or [0.0]
    for cost in costs:
        slot_ends.sort()
        slot_ends[0] += cost
    eta = max(slot_ends)
    return eta if math.isfinite(eta) else None


def counts(trials: list[TrialState], unsampled: int = 0) -> str:
    """'2 running, 1 finished, 1 pending' (states in the order of a trial's life)."""
    order = ["RUNNING", "FINISHED", "FAILED", "KILLED", "pending"]
    seen: dict[str, int] = {}
    for t in trials:
        seen[t.state] = seen.get(t.state, 0) + 1
    seen["pending"] = seen.get("pending", 0) + unsampled
    keys = sorted(seen, key=lambda s: order.index(s) if s in order else len(order))
    return ", ".join(f"{seen[k]} {k.lower()}" for k in keys if seen[k])


HIDDEN = ("iterations",)  # shown inside the iteration column


def _cell(key: str, value: Any, row: dict[str, Any]) -> str:
    if value is None or value == "":
        return "-"
    if key == "iteration":
        return f"{value}/{row['iterations']}" if row.get("iterations") else str(value)
    if key == "eta_s":
        return fmt_duration(value)
    if key == "loss":
        return f"{value:.3f}"
    if key in ("best_target_miou", "img_s"):
        return f"{value:.2f}" if key == "best_target_miou" else f"{value:.1f}"
    return fmt_value(value)


def format_table(rows: list[dict[str, Any]], width: int | None = None) -> list[str]:
    """The rows as aligned text lines (a header first); columns empty in every row are left out, lines
    are cut to `width`."""
    if not rows:
        return []
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    keys = [k for k in keys if k not in HIDDEN and any(r.get(k) not in (None, "") for r in rows)]
    cells = [[_cell(k, r.get(k), r) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    right = [all(isinstance(r.get(k), int | float) or r.get(k) is None for r in rows)
             and not isinstance(rows[0].get(k), bool) for k in keys]

    def line(values: list[str]) -> str:
        text = "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()
        return text if width is None or len(text) <= width else text[:max(1, width - 1)] + "~"

    return [line(keys)] + [line(c) for c in cells]


# ---------------------------------------------------------------------------------------------------
# the live console of a study driver


class Console:
    """The trials of one study run as a live table (a terminal) or event lines (anything else)."""

    def __init__(self, study_name: str, experiment: str | Path, slots: int, unsampled: int = 0,
                 verbose: bool = False, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.time,
                 describe: Callable[[dict[str, Any]], tuple[int, int]] | None = None) -> None:
        self.study, self.experiment = study_name, Path(experiment)
        self.slots, self.unsampled, self.verbose = max(1, slots), unsampled, verbose
        self.stream = stream or sys.stdout
        self.tty = (self.stream.isatty() if tty is None else tty) and not verbose
        self.clock = clock
        self.describe = describe  # point -> (iterations, images per step)
        self.trials: dict[str, TrialState] = {}
        self._read: dict[str, int] = {}  # trial id -> bytes of its output file read
        self._drawn = 0  # table lines on screen (a terminal)
        self._last_draw = self._last_summary = -math.inf
        self._last_line = ""  # the last summary line written
        self._log: TextIO | None = None
        with contextlib.suppress(OSError):
            self.experiment.mkdir(parents=True, exist_ok=True)
            self._log = open(self.experiment / CONSOLE_LOG, "a", buffering=1)  # noqa: SIM115

    # trial events (from the Tune callback) --------------------------------------------------------

    def trial(self, trial_id: str, point: dict[str, Any]) -> TrialState:
        if trial_id not in self.trials:
            t = TrialState(dict(point))
            if self.describe is not None:
                with contextlib.suppress(Exception):  # a point that does not resolve: no schedule shown
                    t.iterations, t.images_per_step = self.describe(point)
            self.trials[trial_id] = t
            if self.unsampled:
                self.unsampled -= 1
        return self.trials[trial_id]

    def started(self, trial_id: str, point: dict[str, Any], resumed: bool = False,
                at: int | None = None) -> None:
        """A trial starts; `resumed`: again, after a failure or in a restored study (at iteration `at`)."""
        t = self.trial(trial_id, point)
        t.state, t.started, t.time_s = "RUNNING", self.clock(), 0.0
        t.iteration, t.img_s, t.loss = at, None, None  # this attempt's
        with contextlib.suppress(OSError):  # what earlier attempts wrote is not this one's progress
            self._read[trial_id] = output_path(self.experiment, trial_id).stat().st_size
        if resumed:
            self.event("resumed", t, f"from iteration {at}" if at else "from the start")
        else:
            self.event("started", t, f"Tune trial {trial_id}")

    def result(self, trial_id: str, point: dict[str, Any], metrics: dict[str, Any]) -> None:
        t = self.trial(trial_id, point)
        values = self._take(t, metrics)
        it = f"iteration {t.iteration}/{t.iterations}" if t.iterations else f"iteration {t.iteration}"
        miou = values.get("target_miou")
        self.event("evaluated", t, f"{it}, target mIoU {_num(miou)} (best {_num(t.best)}), loss {_num(t.loss, 3)}, "
                                   f"{_num(t.img_s, 1)} img/s")

    def finished(self, trial_id: str, point: dict[str, Any]) -> None:
        t = self.trial(trial_id, point)
        self._tick_time(t)
        t.state = "FINISHED"
        self.event("finished", t, f"best target mIoU {_num(t.best)}, {fmt_duration(t.time_s)}")

    def failed(self, trial_id: str, point: dict[str, Any], error: str, retrying: bool = False) -> None:
        t = self.trial(trial_id, point)
        self._tick_time(t)
        t.state = "pending" if retrying else "FAILED"
        last = (error.strip().splitlines() or ["the trial's process died"])[-1]
        then = "; retrying from its last checkpoint" if retrying else ""
        self.event("failed", t, f"{last}{then} (its output: {output_path(self.experiment, trial_id)})")

    @staticmethod
    def _take(t: TrialState, metrics: dict[str, Any]) -> dict[str, float]:
        values = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if "throughput" in values:
            values["img_s"] = values["throughput"]
        if losses := [v for k, v in values.items() if k.startswith("loss/")]:
            values["loss"] = sum(losses)
        t.update(values)
        return values

    # the periodic part ---------------------------------------------------------------------------

    def tick(self, states: Iterable[tuple[str, dict[str, Any], str, dict]] = (), force: bool = False) -> None:
        """Take Tune's trial states (id, point, status, last result), read the running trials' output
        files, and redraw the table (a terminal) or write a summary line when one is due."""
        for trial_id, point, status, last in states:
            t = self.trial(trial_id, point)
            if t.iteration is None and last:  # a trial of a restored study, ended before this driver
                self._take(t, last)
            if status == "ERROR" and t.state != "FAILED":
                t.state = "FAILED"
            elif status == "TERMINATED" and t.state != "FINISHED":
                t.state = "FINISHED"
        for trial_id, t in self.trials.items():
            if t.running:
                self._follow(trial_id, t)
                self._tick_time(t)
        now = self.clock()
        if not self.trials:
            return
        if self.tty:
            if force or now - self._last_draw >= REDRAW_EVERY:
                self._redraw()
        elif force or now - self._last_summary >= SUMMARY_EVERY:
            self._last_summary = now
            if (line := self.summary(detail=True)) != self._last_line:  # the final one comes once
                self._last_line = line
                self._emit(self._stamp() + line)

    def summary(self, detail: bool = False) -> str:
        trials = list(self.trials.values())
        eta = study_eta(trials, self.slots, self.unsampled)
        running = [t for t in trials if t.running]
        text = f"study '{self.study}': {counts(trials, self.unsampled) or 'no trials'}"
        if detail and running:
            text += " (" + "; ".join(f"{t.name} {t.iteration or 0}/{t.iterations or '?'}" for t in running) + ")"
        left = running or any(t.state == "pending" for t in trials) or self.unsampled
        return text + (f"; ETA of the study {fmt_duration(eta)}" if left and eta is not None else "")

    def close(self) -> None:
        """The final table (a terminal) or summary line, then the file closed."""
        with contextlib.suppress(Exception):
            self.tick(force=True)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    # output ----------------------------------------------------------------------------------------

    def event(self, what: str, t: TrialState, detail: str) -> None:
        self._emit(f"{self._stamp()}{what:<9} {t.name}: {detail}")

    def header(self, line: str) -> None:
        self._emit(line)

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S ", time.localtime(self.clock()))

    def _emit(self, line: str) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.write(line + "\n")
        self._erase()
        self.stream.write(line + "\n")
        if self.tty and self.trials:
            self._redraw()
        self.stream.flush()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the table's first line, clear below
            self._drawn = 0

    def _redraw(self) -> None:
        width = shutil.get_terminal_size((120, 24)).columns
        lines = format_table([t.row() for t in self.trials.values()], width - 1)
        lines.append(self.summary()[:max(1, width - 1)])
        self._erase()
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn, self._last_draw = len(lines), self.clock()

    def _tick_time(self, t: TrialState) -> None:
        if t.running and t.started is not None:
            t.time_s = self.clock() - t.started

    def _follow(self, trial_id: str, t: TrialState) -> None:
        """New complete lines of the trial's output file: progress taken, echoed when verbose."""
        path = output_path(self.experiment, trial_id)
        try:
            with open(path, "rb") as f:
                f.seek(self._read.get(trial_id, 0))
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._read[trial_id] = self._read.get(trial_id, 0) + end
        for raw in data[:end].decode(errors="replace").splitlines():
            line = raw.rsplit("\r", 1)[-1]
            if (values := parse_line(line)) is not None:
                t.update(values)
            if self.verbose:
                self._emit(f"({t.name}) {line}")


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


# ---------------------------------------------------------------------------------------------------
# Ray Tune's side


def callback(console: Console, max_failures: int = 0):
    """A Tune `Callback` feeding `console` (events, and a tick after every step of Tune's loop). It
    pickles to an inert callback: Tune saves the run config with the experiment, and `study resume`
    gives the restored experiment a callback of its own console (`runner._tuner`)."""
    from ray.tune import Callback

    def point(trial) -> dict[str, Any]:
        return dict((trial.config or {}).get("point", {}))

    class ConsoleCallback(Callback):
        def __init__(self) -> None:
            self.console = console
            self.retried: set[str] = set()

        def __reduce__(self):
            return (inert_callback, ())

        def _safely(self, what: str, fn, *args, **kwargs) -> None:
            """The console must never stop a study: a failure of its own is logged, the console dropped."""
            if self.console is None:
                return
            try:
                fn(*args, **kwargs)
            except Exception:  # noqa: BLE001
                logging.getLogger(__name__).exception("udabench console: %s failed; the console stops", what)
                self.console = None

        def on_trial_start(self, iteration, trials, trial, **info):
            resumed = trial.trial_id in self.retried or trial.checkpoint is not None
            it = (trial.last_result or {}).get("iteration") if trial.checkpoint is not None else None
            self._safely("on_trial_start", lambda: self.console.started(
                trial.trial_id, point(trial), resumed, None if it is None else int(it)))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._safely("on_trial_result", lambda: self.console.result(trial.trial_id, point(trial), result))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._safely("on_trial_complete", lambda: self.console.finished(trial.trial_id, point(trial)))

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.retried.add(trial.trial_id)
            self._safely("on_trial_recover", lambda: self.console.failed(
                trial.trial_id, point(trial), _error(trial), retrying=True))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._safely("on_trial_error", lambda: self.console.failed(trial.trial_id, point(trial), _error(trial)))

        def on_step_end(self, iteration, trials, **info):
            self._safely("on_step_end", lambda: self.console.tick(
                (t.trial_id, point(t), t.status, t.last_result) for t in trials))

        def on_experiment_end(self, trials, **info):
            self._safely("on_experiment_end", lambda: self.console.tick(
                ((t.trial_id, point(t), t.status, t.last_result) for t in trials), force=True))

    return ConsoleCallback()


def inert_callback():
    """What a pickled console callback becomes (it had a terminal; the unpickled one has none)."""
    cb = callback(None)  # type: ignore[arg-type]
    cb.console = None
    return cb


def _error(trial) -> str:
    with contextlib.suppress(Exception):
        path = getattr(trial, "error_file", None) or ""
        if path and Path(path).is_file():
            return Path(path).read_text()
    with contextlib.suppress(Exception):
        return str(trial.get_error() or "")
    return ""


@contextlib.contextmanager
def ray_output_to_file(experiment: str | Path, verbose: bool):
    """While a study runs quietly: the driver's Ray, Tune and MLflow log records and Python warnings go
    to `<experiment>/ray.log` instead of the console (with `verbose`, nothing changes)."""
    if verbose:
        yield
        return
    handler = logging.FileHandler(Path(experiment) / RAY_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in QUIET_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, list(log.handlers), log.propagate))
        for h in list(log.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                log.removeHandler(h)
        log.addHandler(handler)
        log.propagate = False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for log, handlers, propagate in saved:
            log.removeHandler(handler)
            for h in handlers:
                if h not in log.handlers:
                    log.addHandler(h)
            log.propagate = propagate
        handler.close()


def trainable(config: dict[str, Any], spec: TrialSpec) -> None:
    """The function Tune runs for a trial: `harness.study.trainable.trainable`, with the process's stdout
    and stderr (file descriptors 1 and 2) appended to the trial's `output.log` meanwhile (named
    `trainable` too: Tune restores an experiment only with a trainable of the name it was started with)."""
    from ray import tune

    from harness.study import trainable as one_trial

    path = output_path(spec.experiment_path, tune.get_context().get_trial_id()) if spec.experiment_path else None
    saved: list[int] = []
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            sys.stdout.flush()
            sys.stderr.flush()
            saved = [os.dup(1), os.dup(2)]
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            print(f"--- udabench: trial {tune.get_context().get_trial_id()} ({point_name(config.get('point', {}))}), "
                  f"process {os.getpid()}, niceness {os.nice(0)}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
                  flush=True)
    except OSError:
        path = None  # no output file (e.g. a node without the experiment folder): output stays Ray's
    try:
        one_trial.trainable(config, spec)
    finally:
        if saved:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            for target, fd in zip((1, 2), saved):
                os.dup2(fd, target)
                os.close(fd)



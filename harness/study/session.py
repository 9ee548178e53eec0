"""The Ray session of a study run: start (or join) Ray, with nothing leaving this machine, no orphans.

Ray sends nothing off this machine. A Ray we start (`ray_session` without an address):
- runs with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: every Ray process binds and talks on 127.0.0.1,
  and none asks the kernel for a route to 8.8.8.8 to find "its" address;
- starts with HOME pointing at `<root>/ray_results/.ray_home/`, which holds a
  `ray_bootstrap_config.yaml` naming a local provider (written once if absent; never the user's home):
  without one, Ray's dashboard process probes the cloud-metadata address 169.254.169.254 and looks up
  metadata.google.internal at start, usage stats off or not. Trials get the user's HOME back through
  the job's runtime_env;
- has usage stats off (`RAY_USAGE_STATS_ENABLED=0`) and, for clusters started by `ray start`, the
  "usage stats disabled" notice Ray would still post is pointed at 127.0.0.1
  (`RAY_USAGE_STATS_REPORT_URL`).
`ray_node_env(root)` is that environment for `ray start` (`udabench study ray-env` prints it), so a
cluster that `--address` joins can be started the same way. tests/test_network.py checks all this
with `strace -f -e trace=connect,sendto,sendmsg,sendmmsg`.

Priority: Ray starts its workers at niceness +15 (its `worker_niceness`), so any other work on the
machine outranks the trials and their timings measure the load. Our trials run at the driver's priority
(`worker_niceness=0`, `RAY_worker_niceness` in the job's runtime_env) unless `study run --nice N` asks
for less (tests/test_study_console.py reads it in a real trial).

No orphans: `ray.shutdown()` runs in a `finally`; SIGTERM is turned into Tune's graceful SIGINT
stop. Every process of a Ray we start carries `UDABENCH_RAY_OWNER=<driver pid>:<start time>` in its
environment. A SIGKILLed driver runs no `finally`: its raylet and workers end within 3 s, but Ray's
dashboard and runtime-env agents stay 60 s (they try to tell the dead GCS that the raylet died, with a
60 s timeout fixed in Ray). So a Ray we start comes with a watchdog, a small process of its own
(`watch`, not in the driver's process group) that ends, by pid, every process carrying the driver's mark
within a second of the driver's end, however it ended; and the next study to start ends what is left
of a dead driver's (`reap_orphans`: e.g. after the watchdog itself was killed).

`driver_mark()` names this process as a study driver (the MLflow tag `driver` of the runs it owns) and
`driver_alive(mark)` tells whether that driver still runs, so runs a dead driver left RUNNING are closed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RESULTS_DIR = "ray_results"
RAY_HOME = ".ray_home"
OWNER_ENV = "UDABENCH_RAY_OWNER"
TRIAL_NICENESS = 0  # trials at the driver's priority (Ray's own default puts its workers at +15)
MAX_NICENESS = 19

# For every Ray process we start, and for `ray start` nodes (see the module docstring).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_AUTH_MODE": "disabled",
}
# Only for a single-machine Ray: nodes use 127.0.0.1 (a node joining a cluster needs a real address).
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
BOOTSTRAP_CONFIG = """\
# Written by udabench (harness/study/session.py) for the Ray processes it starts, whose HOME is this folder.
# Ray's dashboard reads ~/ray_bootstrap_config.yaml; naming a provider here stops it from probing
# cloud-metadata addresses (169.254.169.254, metadata.google.internal) at start.
cluster_name: udabench-local
provider:
  type: local
  head_ip: 127.0.0.1
  worker_ips: []
"""


def ray_home(root: str | Path) -> Path:
    """The folder used as HOME by the Ray processes we start (holds ray_bootstrap_config.yaml)."""
    home = Path(root).resolve() / RESULTS_DIR / RAY_HOME
    cfg = home / "ray_bootstrap_config.yaml"
    if not cfg.is_file():
        home.mkdir(parents=True, exist_ok=True)
        tmp = cfg.with_name(f".{cfg.name}.{os.getpid()}.tmp")
        tmp.write_text(BOOTSTRAP_CONFIG)
        os.replace(tmp, cfg)
    return home


def ray_node_env(root: str | Path) -> dict[str, str]:
    """Environment for `ray start` on this machine (a cluster for `--address`): HOME + RAY_ENV."""
    return {"HOME": str(ray_home(root)), **RAY_ENV}


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _owner_mark() -> str:
    return f"{os.getpid()}:{_start_time(os.getpid())}"


def driver_mark() -> str:
    """This process as a study driver (the MLflow tag `driver` of the runs it owns):
    `<pid>:<start time>@<host>`."""
    return f"{_owner_mark()}@{socket.gethostname()}"


def driver_alive(mark: str) -> bool | None:
    """Whether the study driver `mark` (`driver_mark()`) still runs; None when it ran on another machine
    (or this one has no /proc): then nobody here can tell."""
    owner, _, host = mark.partition("@")
    if host != socket.gethostname() or not Path("/proc").is_dir():
        return None
    return _owner_alive(owner) and not _zombie(int(owner.partition(":")[0]))


def marked_processes(mark: str | None = None, env_key: str = OWNER_ENV) -> dict[int, str]:
    """pid -> value of every live process (of this user) whose environment carries env_key [= mark]
    (UDABENCH_RAY_OWNER by default; tests and benchmarks mark what they start with their own key)."""
    found = {}
    key = env_key.encode() + b"="
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(key):
                value = item[len(key):].decode(errors="replace")
                if (mark is None or value == mark) and not _zombie(int(d.name)):
                    found[int(d.name)] = value
                break
    return found


def _owner_alive(value: str) -> bool:
    pid, _, start = value.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == start


def _terminate(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if Path(f"/proc/{pid}").exists() and not _zombie(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def reap_orphans() -> list[int]:
    """End the Ray processes a dead udabench driver left behind (found by their owner mark)."""
    if not Path("/proc").is_dir():
        return []
    orphans = [pid for pid, owner in marked_processes().items() if not _owner_alive(owner)]
    if orphans:
        print(f"udabench: ending {len(orphans)} Ray process(es) left by an earlier, killed study driver",
              file=sys.stderr)
        _terminate(orphans)
    return orphans


WATCHDOG = "import sys; from harness.study.session import watch; watch(sys.argv[1])"


def _start_watchdog(mark: str):
    """Start `watch(mark)` in a process of its own (its own session: a Ctrl-C in the terminal is the
    driver's, not its); None if it cannot start (then `reap_orphans` is the fallback)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # not a process of the Ray it watches
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH")) if p)
    try:
        return subprocess.Popen([sys.executable, "-c", WATCHDOG, mark], env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:
        return None


def _stop_watchdog(proc) -> None:
    if proc is not None:
        with contextlib.suppress(OSError):
            proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def watch(mark: str, interval: float = 0.2) -> None:
    """The watchdog of the driver `mark` (`<pid>:<start time>`): wait until it has ended (however: a
    SIGKILL runs no cleanup), then end every process still carrying its mark (Ray's agents would stay 60 s)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid = int(mark.partition(":")[0])
    while _owner_alive(mark) and not _zombie(pid):
        time.sleep(interval)
    if left := list(marked_processes(mark)):
        _terminate(left, timeout=1.0)  # Ray's runtime-env agent takes 5 s and more to heed a SIGTERM
        with contextlib.suppress(Exception):
            print(f"udabench: the study driver (pid {pid}) ended without shutting its Ray down; ended "
                  f"{len(left)} Ray process(es) it left", file=sys.stderr, flush=True)


@contextlib.contextmanager
def patched_environ(updates: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_niceness(value: int) -> int:
    """A trial niceness (`ray_session(worker_niceness=...)`): 0-19, added to the driver's (nice(2))."""
    from harness.errors import UsageError

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NICENESS:
        raise UsageError(f"--nice: expected an integer from 0 (the trials at the study driver's priority) "
                         f"to {MAX_NICENESS} (only idle CPU time), got {value!r}")
    return value


@contextlib.contextmanager
def ray_session(root: str | Path = ".", address: str | None = None, num_cpus: int | None = None,
                num_gpus: int | None = None, worker_niceness: int = TRIAL_NICENESS,
                log_to_driver: bool = True) -> Iterator[bool]:
    """Ray for a study: joins `address` (an existing cluster), or starts a local Ray that talks only on
    127.0.0.1; yields whether this call started it. An already initialised Ray is used as it is.
    Ray is shut down on the way out (also on errors and Ctrl-C) and nothing of ours is left running.

    `worker_niceness`: what Ray's worker processes (the trials) add to their niceness when they start
    (Ray's `worker_niceness`, 15 unless set; set here per job with `RAY_worker_niceness` in the
    runtime_env, so it holds for a joined cluster too): 0 runs the trials at the priority of the Ray node
    that starts them, i.e. of this driver for a local Ray. `log_to_driver`: whether Ray copies its
    workers' output to this process's console."""
    import logging

    check_niceness(worker_niceness)
    job_env = {"RAY_worker_niceness": str(worker_niceness)}
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield False
        return
    import ray
    import ray._private.ray_constants as rc

    cluster_flag = rc.ENABLE_RAY_CLUSTER
    mark = watchdog = None
    try:
        if address is None:
            reap_orphans()
            mark = _owner_mark()
            watchdog = _start_watchdog(mark)
            user_home = os.path.expanduser("~")
            with patched_environ({**RAY_ENV, **LOCAL_ENV, "HOME": str(ray_home(root)), OWNER_ENV: mark}):
                rc.ENABLE_RAY_CLUSTER = False  # read by ray at import time, and ray is imported already
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=log_to_driver,
                         runtime_env={"env_vars": {"HOME": user_home, **job_env}})
        else:
            with patched_environ(RAY_ENV):
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver,
                         runtime_env={"env_vars": job_env})
    except BaseException:
        rc.ENABLE_RAY_CLUSTER = cluster_flag
        if mark is not None:  # what ray.init started before it failed
            _terminate(list(marked_processes(mark)))
        _stop_watchdog(watchdog)
        raise
    session_dir = _session_dir() if address is None else None
    try:
        yield True
    finally:
        ray.shutdown()
        if session_dir is not None:  # trial working folders: everything in them reached storage_path
            shutil.rmtree(session_dir / "artifacts", ignore_errors=True)
        rc.ENABLE_RAY_CLUSTER = cluster_flag
        if mark is not None:  # agents exit shortly after the raylet; never leave one behind
            deadline = time.monotonic() + 10
            while (left := list(marked_processes(mark))) and time.monotonic() < deadline:
                time.sleep(0.2)
            if left:
                _terminate(left)
        _stop_watchdog(watchdog)


def session_logs() -> Path | None:
    """The logs folder of the Ray session this process is connected to (raylet, GCS, worker output)."""
    found = _session_dir()
    return found / "logs" if found is not None and (found / "logs").is_dir() else None


def _session_dir() -> Path | None:
    """The session folder of the Ray this process started (logs stay; trial folders are removed)."""
    try:
        import ray._private.worker as worker

        return Path(worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - a private API: without it, nothing is removed
        return None

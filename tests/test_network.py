"""Ray on this machine, for real, through the `udabench` CLI: nothing leaves the machine (strace), no
Ray process outlives the study (a token in the environment marks every process a run starts), and a
study scales out to a Ray cluster (`ray start` on loopback) and to an `mlflow server`.

strace: Debian's `strace` package (CI: `apt-get install -y strace`); the tests that need it are skipped,
with the reason, where it is missing or ptrace is not allowed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from harness.study import tracking

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "studies" / "configs"
STRACE = shutil.which("strace")
TOKEN = "UDABENCH_TEST_TOKEN"


# --------------------------------------------------------------------------------------------------
# helpers

def own_addresses() -> set[ipaddress._BaseAddress]:
    import psutil

    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(ipaddress.ip_address(a.address.split("%")[0]))
    return out


def is_local(text: str, own: set) -> bool:
    ip = ipaddress.ip_address(text.strip("[]"))
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or ip in own


_CALL = re.compile(r"^\d+\s+(connect|sendto|sendmsg|sendmmsg)\((\d+)(?:<(\w+):\[([^\]]*(?:\][^\]]*)?)\]>)?")
_SOCKADDR = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def _remote(endpoints: str) -> str | None:
    """'192.0.2.2:5000->8.8.8.8:53' -> '8.8.8.8'; '[::1]:1->[::1]:2' -> '::1'; an inode -> None."""
    if "->" not in endpoints:
        return None
    remote = endpoints.split("->", 1)[1]
    return remote[1:remote.index("]")] if remote.startswith("[") else remote.rsplit(":", 1)[0]


def offences(trace: str, strict: bool) -> tuple[list[str], int]:
    """Lines of an `strace -f -yy -e trace=connect,sendto,sendmsg,sendmmsg` log that reach beyond this
    machine, and how many inet connects the log holds (so an empty log is not a pass). A connect on a
    UDP socket sends nothing (it only picks a route); unless `strict`, it is allowed as long as nothing is
    sent on that socket."""
    own = own_addresses()
    bad, inet = [], 0
    for line in trace.splitlines():
        m = _CALL.match(line)
        if not m or "resumed>" in line:
            continue
        call, _, proto, endpoints = m.groups()
        addrs = [a or b for a, b in _SOCKADDR.findall(line)]
        if proto and endpoints and (r := _remote(endpoints)):
            addrs.append(r)
        if call == "connect" and addrs:
            inet += 1
        if not [a for a in addrs if not is_local(a, own)]:
            continue
        if call == "connect" and proto in ("UDP", "UDPv6") and not strict:
            continue
        bad.append(line)
    return bad, inet


def test_the_trace_checker_catches_what_leaves():
    own = next(iter(a for a in own_addresses() if not a.is_loopback), ipaddress.ip_address("192.0.2.2"))
    trace = textwrap.dedent(f"""\
        1  connect(6<TCP:[1]>, {{sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr("127.0.0.1")}}, 16) = 0
        1  connect(7<TCP:[2]>, {{sa_family=AF_INET, sin_port=htons(1), sin_addr=inet_addr("{own}")}}, 16) = 0
        2  connect(3<UDP:[3]>, {{sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}}, 16) = 0
        3  connect(4<TCP:[4]>, {{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("169.254.169.254")}}, 16) = -1 EINPROGRESS
        4  sendmmsg(5<UDP:[{own}:4000->10.255.255.53:53]>, [{{msg_hdr={{}}}}], 2, MSG_NOSIGNAL) = 2
        5  connect(9<TCPv6:[5]>, {{sa_family=AF_INET6, sin6_port=htons(1), inet_pton(AF_INET6, "::ffff:127.0.0.2", &sin6_addr)}}, 28) = 0
        """)
    bad, inet = offences(trace, strict=False)
    assert inet == 5 and [line.split()[0] for line in bad] == ["3", "4"]
    assert [line.split()[0] for line in offences(trace, strict=True)[0]] == ["2", "3", "4"]


def test_ray_env_for_ray_start_nodes(tmp_path, capsys):
    from harness.cli import main

    assert main(["study", "ray-env", "--root", str(tmp_path)]) == 0
    env = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert env["HOME"] == str(tmp_path.resolve() / "ray_results" / ".ray_home")
    assert "provider:\n  type: local" in (Path(env["HOME"]) / "ray_bootstrap_config.yaml").read_text()
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert is_local(env["RAY_USAGE_STATS_REPORT_URL"].split("//")[1].split(":")[0], set())


def marked(token: str) -> list[int]:
    """Live processes whose environment carries TOKEN=token (everything a run started)."""
    from harness.study.session import marked_processes

    return sorted(marked_processes(token, env_key=TOKEN))


def wait_gone(token: str, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked(token)) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left


def kill_marked(token: str) -> None:
    for pid in marked(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def project(tmp_path, synth_root):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "synthetic").symlink_to(synth_root)
    (tmp_path / "studies").mkdir()
    return tmp_path


def write_study(project: Path, name: str, seeds: list[int], extra: str = "") -> Path:
    path = project / "studies" / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        description: {name}
        config: {CONFIGS}/daformer.yaml
        grid:
          seed: {seeds}
        """) + extra)
    return path


def cli_env(token: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({TOKEN: token, "PYTHONUNBUFFERED": "1", **extra})
    return env


def udabench(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def runs(project: Path, study: str, uri: str | None = None) -> list:
    uri = uri or tracking.default_tracking_uri(project)
    if uri.startswith("sqlite") and not (project / "mlruns" / "mlflow.db").is_file():
        return []
    exp = tracking.experiment_id(uri, study)
    return tracking.search(uri, exp) if exp else []


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - e.g. the store is being created
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the study driver exited ({proc.returncode}) before: {what}\n"
                                 + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for: {what}\n" + (log.read_text()[-3000:] if log else ""))


def strace_works() -> str | None:
    if STRACE is None:
        return "strace is not installed (Debian: apt-get install -y strace)"
    r = subprocess.run([STRACE, "-f", "-e", "trace=connect", "-o", os.devnull, "true"], capture_output=True,
                       text=True)
    return None if r.returncode == 0 else f"strace cannot trace here: {r.stderr.strip()}"


# --------------------------------------------------------------------------------------------------
# a local study: nothing leaves the machine, nothing is left running

def ray_sessions() -> set[Path]:
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    return set(root.glob("session_2*"))


def test_local_study_sends_nothing_off_the_machine_and_leaves_no_process(project):
    if why := strace_works():
        pytest.skip(why)
    study = write_study(project, "net", [0])
    sessions = ray_sessions()
    home_file = (Path.home() / "ray_bootstrap_config.yaml").exists()
    token = uuid.uuid4().hex
    trace = project / "strace.log"
    try:
        r = subprocess.run([STRACE, "-f", "-yy", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg",
                            "-o", str(trace), *udabench("study", "run", str(study), "--scale", "smoke",
                                                        "--root", str(project), "--num-cpus", "2")],
                           cwd=project, env=cli_env(token), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        left = wait_gone(token)
        assert left == [], f"Ray processes left running: {left}"
    finally:
        kill_marked(token)
    assert [x.info.status for x in runs(project, "net")] == ["FINISHED"]
    bad, inet = offences(trace.read_text(), strict=True)
    assert inet > 10, "the trace saw no Ray traffic at all: was it traced?"
    assert bad == [], "connections beyond this machine:\n" + "\n".join(bad[:20])
    bootstrap = project / "ray_results" / ".ray_home" / "ray_bootstrap_config.yaml"
    assert "type: local" in bootstrap.read_text()
    assert (Path.home() / "ray_bootstrap_config.yaml").exists() == home_file  # the user's home: untouched
    # nor does it fill the disk: trial folders (a checkpoint each) in Ray's temp folder are removed
    new = ray_sessions() - sessions
    assert len(new) == 1 and (next(iter(new)) / "logs").is_dir(), new
    assert not (next(iter(new)) / "artifacts").exists()


@pytest.mark.slow
def test_sigterm_stops_the_study_gracefully_and_leaves_no_process(project):
    study = write_study(project, "term", [0, 1], "max_concurrent: 1\n")
    token = uuid.uuid4().hex
    log = project / "driver.log"
    proc = subprocess.Popen(udabench("study", "run", str(study), "--scale", "smoke", "--root", str(project),
                                     "--num-cpus", "2"), cwd=project, env=cli_env(token),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: [x for x in runs(project, "term") if "target_miou" in x.data.metrics], 300,
                 "a first evaluation", proc, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        out = log.read_text()
        assert proc.returncode == 130, out[-3000:]
        assert "`udabench study resume` continues" in out, out[-3000:]
        left = wait_gone(token)
        assert left == [], f"Ray processes left running: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(token)
    states = sorted(x.info.status for x in runs(project, "term"))
    assert states and "RUNNING" not in states, (states, log.read_text()[-3000:])  # KILLED if cut mid-trial
    meta = json.loads(next((project / "ray_results").glob("term.smoke.*/udabench.json")).read_text())
    assert meta["scale"] == "smoke" and meta["planned"] == 2


@pytest.mark.slow
def test_sigkilled_driver_orphans_are_reaped_and_resume_finishes(project):
    study = write_study(project, "kill", [0, 1], "max_concurrent: 1\n")
    token = uuid.uuid4().hex
    env = cli_env(token)
    log = project / "driver.log"
    proc = subprocess.Popen(udabench("study", "run", str(study), "--scale", "smoke", "--root", str(project),
                                     "--num-cpus", "2"), cwd=project, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: [x for x in runs(project, "kill") if x.info.status == "FINISHED"], 300,
                 "a finished trial", proc, log)
        time.sleep(2.5)  # > the 2 s state snapshot period
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(2)
        orphans = marked(token)  # often Ray's dashboard and runtime-env agents, not always
        finished_before = {x.data.tags["axis.seed"]: x for x in runs(project, "kill") if x.info.status == "FINISHED"}
        r = subprocess.run(udabench("study", "resume", str(study), "--root", str(project), "--num-cpus", "2"),
                           cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert ("left by an earlier, killed study driver" in r.stderr) == bool(orphans), r.stderr[-2000:]
        assert wait_gone(token) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(token)
    after = {x.data.tags["axis.seed"]: x for x in runs(project, "kill")}
    assert set(after) == {"0", "1"} and {x.info.status for x in after.values()} == {"FINISHED"}
    for seed, run in finished_before.items():
        assert after[seed].info.run_id == run.info.run_id and after[seed].info.end_time == run.info.end_time


def test_reaper_ends_the_processes_of_a_dead_driver_and_only_those():
    from harness.study import session

    gone = subprocess.Popen(["true"])
    gone.wait()
    token = uuid.uuid4().hex
    orphan = subprocess.Popen(["sleep", "300"], env=cli_env(token, **{session.OWNER_ENV: f"{gone.pid}:1"}))
    kept = subprocess.Popen(["sleep", "300"], env=cli_env(token, **{session.OWNER_ENV: session._owner_mark()}))
    try:
        wait_for(lambda: len(marked(token)) == 2, 10, "both processes")
        reaped = session.reap_orphans()
        assert orphan.pid in reaped and kept.pid not in reaped
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert kept.poll() is None
    finally:
        for p in (orphan, kept):
            p.kill()
            p.wait()


# --------------------------------------------------------------------------------------------------
# scale-out: a Ray cluster on loopback (two nodes) and an MLflow server on 127.0.0.1

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """End a process group we started (all of it: `ray start --block` and the node's processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_scale_out_to_a_loopback_cluster_and_an_mlflow_server(project):
    from harness.study.session import ray_node_env

    token = uuid.uuid4().hex
    ray_bin = str(Path(sys.executable).parent / "ray")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    temp = tempfile.mkdtemp(prefix="udb", dir="/tmp")  # short: Ray's socket paths are length-limited
    node_env = {**cli_env(token), **ray_node_env(project)}
    gcs, web = free_port(), free_port()
    procs = []
    try:
        procs.append(start([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.2",
                            f"--port={gcs}", "--num-cpus=1", '--resources={"node_a": 1}', f"--temp-dir={temp}",
                            "--include-dashboard=false", "--disable-usage-stats"], project / "head.log", node_env))
        wait_for(lambda: "Ray runtime started" in (project / "head.log").read_text(), 120, "the head node")
        procs.append(start([ray_bin, "start", "--block", f"--address=127.0.0.2:{gcs}",
                            "--node-ip-address=127.0.0.3", "--num-cpus=1", '--resources={"node_b": 1}'],
                           project / "worker.log", node_env))
        procs.append(start([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(web), "--workers", "1",
                            "--backend-store-uri", f"sqlite:///{project}/server.db",
                            "--artifacts-destination", f"{project}/server-artifacts"],
                           project / "mlflow.log", cli_env(token)))
        wait_for(lambda: "Ray runtime started" in (project / "worker.log").read_text(), 120, "the worker node")
        uri = f"http://127.0.0.1:{web}"
        import urllib.request

        wait_for(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, 120, "mlflow server")

        study = write_study(project, "cluster", [0, 1])
        r = subprocess.run(udabench("study", "run", str(study), "--scale", "smoke", "--root", str(project),
                                    "--address", f"127.0.0.2:{gcs}"), cwd=project,
                           env=cli_env(token, MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        server_runs = runs(project, "cluster", uri)
        assert {x.info.status for x in server_runs} == {"FINISHED"} and len(server_runs) == 2
        assert {x.data.tags["node_ip"] for x in server_runs} == {"127.0.0.2", "127.0.0.3"}
        assert len({x.data.tags["node_id"] for x in server_runs}) == 2
        client = tracking.client(uri)
        for x in server_runs:
            assert sorted(a.path for a in client.list_artifacts(x.info.run_id)) == ["config.yaml", "per_class.csv"]
        assert not (project / "mlruns").exists()  # nothing went to the embedded store
    finally:
        for p in reversed(procs):
            stop(p)
        kill_marked(token)
        shutil.rmtree(temp, ignore_errors=True)
    assert wait_gone(token) == []

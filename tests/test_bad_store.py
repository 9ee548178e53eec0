"""Bad MLflow stores (issue 20, classes 1 and 3): `udabench report`, `study status` and `study run`
given an empty, foreign, truncated, damaged or older-schema store file each exit with code 2 and one
line naming the file and what was expected, with no traceback; the store's bytes (sha256) and the
output folders are the same afterwards, and `study run` refuses before Ray starts. The reading
commands never create or migrate a store. `report --out` at an existing file is refused the same way.

Every store here is real: one filled through the MLflow client (benchmarks/bench_report.py), then
truncated or overwritten; an older schema is MLflow's own migrations stopped ten revisions early.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "demo.yaml")


@pytest.fixture(scope="module")
def good(tmp_path_factory, fill_store) -> Path:
    """A real MLflow store: one study (`good_0`) of 4 finished runs."""
    db = tmp_path_factory.mktemp("good") / "mlflow.db"
    fill_store(f"sqlite:///{db}", n_runs=4, studies=1, evals=1, prefix="good")
    return db


@pytest.fixture(scope="module")
def older(tmp_path_factory) -> Path:
    """A real store of an older MLflow schema: the initial tables, then MLflow's migrations up to ten
    revisions before this MLflow's head, and a Default experiment as MLflow writes one."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db = tmp_path_factory.mktemp("older") / "mlflow.db"
    url = f"sqlite:///{db}"
    cfg = _get_alembic_config(url)
    revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()]  # head first
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revisions[10])
        conn.execute(sqlalchemy.text("INSERT INTO experiments (experiment_id, name, artifact_location, "
                                     "lifecycle_stage) VALUES (0, 'Default', 'file:///tmp', 'active')"))
    engine.dispose()
    return db


def _page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def _damaged_page(src: Path, dst: Path) -> None:
    """The root page of the `runs` table overwritten with garbage (header and size intact)."""
    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    (root_page,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    con.close()
    data = bytearray(src.read_bytes())
    page = _page_size(data)
    data[(root_page - 1) * page:root_page * page] = b"\x5a" * page
    dst.write_bytes(bytes(data))


def _make(case: str, good: Path, older: Path, dst: Path) -> str:
    """Write the bad store `case` at `dst`; returns what the error must say."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if case == "empty":
        dst.write_bytes(b"")
        return "empty file (0 bytes)"
    if case == "text":
        dst.write_text("experiment,run\nmain,1\n")
        return "not an SQLite database"
    if case == "truncated":
        data = good.read_bytes()
        dst.write_bytes(data[:len(data) // 2])
        return "truncated"
    if case == "garbage_header":
        data = bytearray(good.read_bytes())
        data[:100] = b"\x00garbage" * 12 + b"\x00" * 4
        dst.write_bytes(bytes(data))
        return "not an SQLite database"
    if case == "damaged_page":
        _damaged_page(good, dst)
        return "damaged (SQLite"
    if case == "foreign_sqlite":
        con = sqlite3.connect(dst)
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('not mlflow')")
        con.commit()
        con.close()
        return "not an MLflow store (no table experiments, runs, alembic_version"
    if case == "no_tables":
        con = sqlite3.connect(dst)
        con.execute("CREATE TABLE t (x)")
        con.execute("DROP TABLE t")
        con.commit()
        con.close()
        return "SQLite database with no tables"
    if case == "older_schema":
        shutil.copyfile(older, dst)
        return "older schema"
    raise AssertionError(case)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256)."""
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err + captured.out
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


READ_CASES = ["empty", "text", "truncated", "garbage_header", "damaged_page", "foreign_sqlite", "no_tables",
              "older_schema"]
WRITE_CASES = ["text", "truncated", "garbage_header", "damaged_page", "foreign_sqlite", "older_schema"]


@pytest.mark.parametrize("case", READ_CASES)
def test_report_refuses_a_bad_store_and_changes_nothing(case, good, older, tmp_path, capsys):
    db = tmp_path / "store" / "mlflow.db"
    expected = _make(case, good, older, db)
    before = _sha(db)
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text('{"kept": 1}\n')
    assert main(["report", "good_0", "--tracking-uri", f"sqlite:///{db}", "--out", str(out)]) == 2
    _one_line_error(capsys, str(db), expected)
    assert _sha(db) == before
    assert _tree(out) == {"metrics.json": _sha(out / "metrics.json")} and (out / "metrics.json").read_text() == '{"kept": 1}\n'
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize("case", READ_CASES)
def test_study_status_refuses_a_bad_store_and_changes_nothing(case, good, older, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    expected = _make(case, good, older, db)
    before = _tree(tmp_path)
    assert main(["study", "status", STUDY, "--scale", "smoke", "--root", str(tmp_path)]) == 2
    _one_line_error(capsys, str(db), expected)
    assert _tree(tmp_path) == before  # the store's sha256 included; no lock file, no folder


@pytest.mark.parametrize("case", WRITE_CASES)
def test_study_run_refuses_a_bad_store_before_ray_starts(case, good, older, tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    expected = _make(case, good, older, db)
    before = _tree(tmp_path)
    assert main(["study", "run", STUDY, "--scale", "smoke", "--root", str(tmp_path)]) == 2
    _one_line_error(capsys, str(db), expected)
    assert _tree(tmp_path) == before and not (tmp_path / "ray_results").exists()
    assert not ray.is_initialized()


@pytest.mark.parametrize("case", ["empty", "no_tables"])
def test_study_run_on_an_empty_store_writes_nothing_when_refused(case, good, older, tmp_path, capsys,
                                                                  monkeypatch):
    """An empty file (0 bytes, or SQLite without tables) is a store not created yet: `study run` may
    create MLflow's tables in it, but only once it runs trials; refused for another reason first (no
    dataset here), it leaves the file as it was."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    _make(case, good, older, db)
    before = _tree(tmp_path)
    assert main(["study", "run", STUDY, "--scale", "smoke", "--root", str(tmp_path)]) == 2
    _one_line_error(capsys, "synthetic dataset folder not found")
    assert _tree(tmp_path) == before


def test_readers_leave_a_good_store_byte_identical(good, tmp_path, capsys, monkeypatch):
    """The control: on a real store, report and status succeed and change nothing in it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(good, db)
    before = _sha(db)
    assert main(["report", "good_0", "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "r"),
                 "--no-figures"]) == 0
    assert main(["study", "status", STUDY, "--scale", "smoke", "--root", str(tmp_path)]) == 0
    assert "4 pending" in capsys.readouterr().out
    assert _sha(db) == before


def test_report_refuses_a_store_without_the_default_experiment(good, tmp_path, capsys):
    """MLflow adds the Default experiment (id 0) to a store it opens: a reader refuses instead."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(good, db)
    con = sqlite3.connect(db)
    con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    con.commit()
    con.close()
    before = _sha(db)
    assert main(["report", "good_0", "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, str(db), "without the Default experiment")
    assert _sha(db) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["sqlite_file_as_path", "missing_folder"])
def test_report_refuses_a_bare_path_store(kind, good, tmp_path, capsys):
    """A path without `sqlite:///` names an MLflow file-store folder: an SQLite file given so gets the
    URI to use; a missing folder is not created."""
    if kind == "sqlite_file_as_path":
        uri = str(tmp_path / "mlflow.db")
        shutil.copyfile(good, uri)
        needle = f"pass sqlite:///{Path(uri).resolve()}"
    else:
        uri = str(tmp_path / "no" / "store")
        needle = "no such folder"
    before = _tree(tmp_path)
    assert main(["report", "good_0", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, uri, needle)
    assert _tree(tmp_path) == before and not (tmp_path / "no").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_report_out_at_an_existing_file_is_refused(where, good, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    shutil.copyfile(good, db)
    target = tmp_path / "report.md"
    target.write_text("mine\n")
    out = target if where == "file" else target / "sub"
    before = _tree(tmp_path)
    assert main(["report", "good_0", "--tracking-uri", f"sqlite:///{db}", "--out", str(out)]) == 2
    _one_line_error(capsys, f"--out {out}", "is a file" if where == "file" else f"under {target}, which is a file")
    assert _tree(tmp_path) == before


def test_a_bad_store_exits_2_in_a_real_process(good, older, tmp_path):
    """The same refusal from the installed command: exit status 2, one line on stderr, no traceback."""
    db = tmp_path / "mlflow.db"
    _make("garbage_header", good, older, db)
    before = _sha(db)
    r = subprocess.run([sys.executable, "-m", "harness.cli", "report", "good_0", "--tracking-uri",
                        f"sqlite:///{db}", "--out", str(tmp_path / "r")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert str(db) in r.stderr and "not an SQLite database" in r.stderr
    assert _sha(db) == before and not (tmp_path / "r").exists()


def test_a_store_being_created_is_checked_once_complete(good, tmp_path):
    """`tracking.client` holds `<store>.lock` while it creates a fresh store's tables: a check meanwhile
    waits for it, instead of calling the half-made store empty or of an older schema."""
    import fcntl
    import threading

    from harness.study import tracking

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    result: list[object] = []
    with open(db.with_name("mlflow.db.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db.write_bytes(b"")  # as sqlite leaves it before the first table
        worker = threading.Thread(target=lambda: result.append(
            _outcome(tracking.check_store, f"sqlite:///{db}")))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not result
        shutil.copyfile(good, db)  # the tables are made
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(30)
    assert result == [None]


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # the test wants to see it, not the thread
        return e

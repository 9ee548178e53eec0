"""The DVC data pipeline for real: `dvc repro` builds the synthetic set (a second run does nothing),
`dvc push`/`dvc pull` through a local-folder remote, a clean clone rebuilds the same bytes, and the
`convert` stage runs for a raw set put under DVC with `dvc add`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.data.io import write_png

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = """\
synth:
  seed: 0
  width: 64
  height: 32
  splits:
    source: {train: 3}
    target: {train: 2, val: 2}
  style: {}
convert:
  sets: {}
"""
DATA_STAGES = ("synth", "convert")
CODE = ["harness/data/synthetic", "harness/data/io.py", "harness/labels.py", "harness/data/convert.py",
        "harness/data/layouts.py"]


@pytest.fixture
def env():
    if shutil.which("dvc", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("dvc is not installed in the virtualenv")
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"  # udabench and dvc
    e.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
             GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    return e


def sh(env, cwd, *cmd) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_repo(env, path: Path) -> Path:
    path.mkdir()
    sh(env, path, "git", "init", "-q")
    # the real data stages of dvc.yaml (other stages depend on code and studies not copied here)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in DATA_STAGES}}, sort_keys=False))
    (path / "params.yaml").write_text(TINY_PARAMS)
    for f in CODE:
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / f).is_dir():
            shutil.copytree(REPO / f, path / f, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / f, path / f)
    sh(env, path, "dvc", "init", "-q")
    sh(env, path, "dvc", "config", "core.analytics", "false")
    sh(env, path, "git", "add", "-A")
    sh(env, path, "git", "commit", "-q", "-m", "init")
    return path


def test_repro_twice_push_pull_and_clean_clone(env, tmp_path):
    repo = make_repo(env, tmp_path / "repo")
    out = sh(env, repo, "dvc", "repro")
    assert "Running stage 'synth'" in out
    data = repo / "datasets" / "synthetic"
    assert (data / "manifest.json").is_file() and (data / "target/val/labels/00001.png").is_file()
    assert "/synthetic" in (repo / "datasets" / ".gitignore").read_text().split()  # git-ignored, DVC-cached
    again = sh(env, repo, "dvc", "repro")
    assert "didn't change" in again and "up to date" in again and "Running stage" not in again
    built = tree(data)

    remote = tmp_path / "remote"
    sh(env, repo, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(env, repo, "git", "add", "-A")
    sh(env, repo, "git", "commit", "-q", "-m", "data")
    sh(env, repo, "dvc", "push")
    assert any(p.is_file() for p in remote.rglob("*"))
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(env, repo, "dvc", "pull")
    assert tree(data) == built

    clone = tmp_path / "clone"
    sh(env, tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "datasets" / "synthetic").exists()
    out = sh(env, clone, "dvc", "repro", "--force")  # rebuild from the code, not from any cache
    assert "Running stage 'synth'" in out
    assert tree(clone / "datasets" / "synthetic") == built  # the same bytes on a clean clone


def test_convert_stage_for_a_raw_set_under_dvc(env, tmp_path):
    repo = make_repo(env, tmp_path / "repo")
    raw = repo / "datasets" / "gta5"
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    for i in range(2):
        write_png(raw / "images" / f"{i:05d}.png", np.zeros((8, 12, 3), np.uint8))
        write_png(raw / "labels" / f"{i:05d}.png", np.array([[7, 26, 0]], np.uint8).repeat(8, 0).repeat(4, 1))
    sh(env, repo, "dvc", "add", "datasets/gta5")
    (repo / "params.yaml").write_text(TINY_PARAMS.replace(
        "sets: {}", "sets:\n    gta5: {dataset: gta5, root: datasets/gta5, out: datasets/gta5_trainids}"))
    assert "convert@gta5" in sh(env, repo, "dvc", "stage", "list")
    out = sh(env, repo, "dvc", "repro", "convert@gta5")
    assert "Running stage 'convert@gta5'" in out
    conv = repo / "datasets" / "gta5_trainids"
    counts = (conv / "class_counts.csv").read_text().splitlines()
    assert len(counts) == 3 and counts[1].startswith("00000,")
    assert "didn't change" in sh(env, repo, "dvc", "repro", "convert@gta5")

"""`udabench data ...`: synth, show, stats, convert, verify, and one-line usage errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.data.io import write_png


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_with_overrides_then_show_and_stats(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults, overridden below
    code, out, _ = run(capsys, "data", "synth", "--out", "s", "--size", "96x48", "--seed", "3",
                       "--count", "source/train=3", "--count", "target/val=2", "--count", "target-night/val=2")
    assert code == 0 and "wrote 7 images to s" in out and "road" in out
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["params"]["seed"] == 3 and sorted(m["splits"]) == ["source/train", "target-night/val", "target/val"]

    code, out, _ = run(capsys, "data", "show", "--root", "s", "--out", "grid.png", "-n", "2")
    assert code == 0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (84 + 2 * (96 + 2), 3 * 2 * (48 + 2))  # 3 domains x (image row + label row)

    code, out, _ = run(capsys, "data", "stats", "--root", "s")
    assert code == 0 and "target-night/val" in out and "traffic light" in out
    code, out, _ = run(capsys, "data", "stats", "--root", "s", "--domain", "target", "--split", "val")
    assert code == 0 and "2 images" in out
    code, out, _ = run(capsys, "data", "verify", "--dataset", "synthetic", "--root", "s", "--domain", "source")
    assert code == 0 and "3 image/label pairs OK" in out


def test_synth_reads_params_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "synth:\n  seed: 2\n  width: 64\n  height: 32\n  splits:\n    target: {val: 2}\n"
        "  style:\n    target: {optics: {noise: 0}}\n")
    code, out, _ = run(capsys, "data", "synth", "--quiet")
    assert code == 0 and out.startswith("wrote 2 images to datasets/synthetic")
    m = json.loads((tmp_path / "datasets/synthetic/manifest.json").read_text())
    assert m["params"]["style"] == {"target": {"optics": {"noise": 0}}}


@pytest.mark.parametrize("argv,message", [
    (["data", "synth", "--size", "96"], "--size '96': expected WIDTHxHEIGHT"),
    (["data", "synth", "--count", "target=3"], "--count 'target=3': expected DOMAIN/SPLIT=N"),
    (["data", "synth", "--count", "tagret/val=3"], "unknown domain 'tagret'"),
    (["data", "synth", "--params", "missing.yaml"], "missing.yaml: no such config file"),
    (["data", "show", "--root", "nowhere"], "nowhere: synthetic dataset folder not found"),
    (["data", "verify", "--dataset", "gta5", "--root", "nowhere"],
     "nowhere: gta5 dataset folder not found; expected layout: <root>/images/NNNNN.png"),
    (["data", "convert", "--dataset", "cityscapes", "--root", "nowhere"],
     "nowhere: cityscapes dataset folder not found; expected layout: <root>/leftImg8bit"),
    (["data", "verify", "--dataset", "gtav", "--root", "."], "unknown dataset 'gtav' (did you mean 'gta5'?)"),
])
def test_usage_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_missing_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data"])
    assert e.value.code == 2 and "ACTION" in capsys.readouterr().err


def test_convert_and_verify_a_real_layout(tmp_path, capsys):
    root = tmp_path / "gta5"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        write_png(root / "images" / f"{i:05d}.png", np.zeros((8, 12, 3), np.uint8))
        write_png(root / "labels" / f"{i:05d}.png", np.full((8, 12), 26, np.uint8))  # car
    code, out, _ = run(capsys, "data", "convert", "--dataset", "gta5", "--root", str(root))
    assert code == 0 and "converted 2 gta5 labels" in out
    code, out, _ = run(capsys, "data", "stats", "--dataset", "gta5", "--root", str(root))
    assert code == 0 and "2 images" in out and "100.00 %" in out  # all car
    write_png(root / "labels" / "00001.png", np.full((9, 12), 26, np.uint8))
    code, _, err = run(capsys, "data", "convert", "--dataset", "gta5", "--root", str(root))
    assert code == 2 and "labels/00001.png: label size 12x9 differs from its image" in err

"""Fault tests that need no Ray: bad input is refused with a message naming the file, field or value,
exit code 2, and nothing written (no output folder, no MLflow store, no Ray results).

- malformed run configs, through `udabench train` and as the base config of a study (`udabench study
  run`); malformed study files and study-run arguments that tests/test_study_validate.py does not try;
- a dataset with a truncated PNG, and one with an image whose label is missing: `udabench study run`
  names the file before Ray starts, and an MLflow store that already holds runs is left byte for byte
  as it was; `udabench data verify` names the same files.

The Ray faults (driver SIGKILL, worker SIGKILL, two studies at once) are in test_faults_ray.py.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "studies" / "configs"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root -> sha256 of its bytes (folders as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink() or p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------------
# malformed run configs: (file text, expected message part, also tried as a study's base config)

RUN_CONFIGS: dict[str, tuple[bytes, str, bool]] = {
    "not_yaml": (b"model: [unclosed\n", "not valid YAML", True),
    "not_utf8": (b"\xff\xfe\x00model\x80\n", "not a UTF-8 text file (byte 0", True),
    "top_level_list": (b"- model\n- seed\n", "expected a mapping at the top level, got list", True),
    "unknown_key": (b"modle: {arch: daformer}\n", "modle: unknown key (did you mean 'model'?)", True),
    "wrong_type": (b"schedule: {iterations: many}\n", "schedule.iterations:", False),  # scales set it
    "list_for_int": (b"seed: [1]\n", "seed:", True),
    "out_of_range": (b"optim: {lr: -1}\n", "optim.lr:", True),
    "tuple_length": (b"data: {crop: [64, 64, 3]}\n", "data.crop:", False),  # scales set it
    "bad_device": (b"device: tpu\n", "'tpu'", True),
    "unknown_arch": (b"model: {arch: deeplab}\n", "unknown model architecture 'deeplab' (did you mean 'deeplabv2'?)",
                     True),
    "unknown_model_option": (b"model: {arch: deeplabv2, options: {output_strid: 8}}\n",
                             "output_strid: unknown key (did you mean 'output_stride'?)", True),
    "unknown_host": (b"method: {host: dac}\n", "unknown host method 'dac' (did you mean 'dacs'?)", True),
    "unknown_aux_task": (b"method: {aux: {mfn: {}}}\n", "'mfn' (did you mean 'mfm'?)", True),
    "aux_option_range": (b"method: {aux: {mfm: {options: {mask_ratio: 1.5}}}}\n", "mask_ratio", True),
    "aux_needs_pseudo_labels": (b"method: {host: source_only, aux: {mfm: {}}}\n",
                                "needs the teacher's pseudo-labels", True),
    "unknown_dataset": (b"data: {source: {name: gta6}}\n", "unknown dataset 'gta6' (did you mean 'gta5'?)", True),
    "missing_base": (b"base: nope.yaml\n", "nope.yaml: no such config file", True),
    "circular_base": (b"base: circular_base.yaml\n", "circular 'base:' chain", True),
    # values the schema once let through, that broke later with a traceback (issue 20)
    "zero_crop": (b"data: {crop: [0, 64]}\n", "data.crop.0: Input should be greater than 0 (got 0)", False),
    "negative_seed": (b"seed: -1\n", "seed: Input should be greater than or equal to 0 (got -1)", False),
    "model_not_a_mapping": (b"model: 5\n", "model: Input should be a valid dictionary", True),
    "max_images_zero": (b"eval: {max_images: 0}\n", "eval.max_images: Input should be greater than or equal to 1",
                        False),
    "stride_over_crop": (b"eval: {mode: slide, crop: [32, 32], stride: [64, 16]}\n",
                         "stride (64, 16) larger than crop (32, 32)", True),
    "slide_without_crop": (b"eval: {mode: slide}\n", "mode 'slide' needs crop", True),
    "crop_over_resize": (b"data: {crop: [96, 96], source: {resize: [128, 64]}}\n",
                         "crop (height, width) (96, 96) is larger than data.source.resize", False),
    "betas_out_of_range": (b"optim: {betas: [0.9, 1.5]}\n", "optim.betas.1: Input should be less than 1", True),
    # YAML that used to be read silently another way
    "duplicate_key": (b"seed: 1\noptim: {lr: 0.001}\nseed: 2\n",
                      "line 3, column 1: duplicate key 'seed' (first on line 1, again on line 3)", True),
    "alias_bomb": (b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode() for i in range(8)),
        "values through YAML aliases (at most 100,000)", True),
    "recursive_alias": (b"a: &a [*a]\n", "a recursive alias", True),
}


# Checked when `udabench train` builds the run (the model, the datasets), not when it loads the file:
# the message names the field and value, not the config file. `study run` checks them up front.
BUILD_TIME = {"unknown_model_option", "unknown_dataset"}


@pytest.fixture
def project(tmp_path, synth_root):
    """A project folder whose datasets/synthetic is the session's tiny set (so that a config would
    otherwise run)."""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "synthetic").symlink_to(synth_root)
    return tmp_path


@pytest.mark.parametrize("case", list(RUN_CONFIGS))
def test_malformed_run_config_exit_2_names_it_and_writes_nothing(case, project, capsys, monkeypatch):
    text, message, via_study = RUN_CONFIGS[case]
    monkeypatch.chdir(project)
    path = project / f"{case}.yaml"
    path.write_bytes(text)
    before = snapshot(project)

    # a short schedule, in case a config were (wrongly) accepted: the run would end, and the test fail
    safety = [] if case == "wrong_type" else ["--set", "schedule.iterations=1"]
    assert main(["train", str(path), "--output", str(project / "out"), *safety]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("udabench train: error: "), err
    if case not in BUILD_TIME:
        named = "nope.yaml" if case == "missing_base" else f"{case}.yaml"  # the file that is wrong
        assert named in err.splitlines()[0], err
    assert snapshot(project) == before  # no out/, nothing else

    if not via_study:
        return
    study = project / "study.yaml"
    study.write_text(f"description: a study on a malformed run config\nconfig: {path.name}\ngrid: {{seed: [0]}}\n")
    before = snapshot(project)
    assert main(["study", "run", str(study), "--scale", "smoke", "--root", str(project)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "study.yaml" in err or "study/seed=0" in err, err
    assert snapshot(project) == before  # no mlruns/, no ray_results/


# --------------------------------------------------------------------------------------------------
# malformed study files and arguments (besides the schema mistakes of test_study_validate.py)

GOOD_STUDY = f"description: x\nconfig: {CONFIGS / 'base.yaml'}\ngrid: {{seed: [0]}}\n"
STUDY_FILES: dict[str, tuple[bytes | None, list[str], str]] = {
    # case: (study file bytes; None = no file at all, extra arguments, expected message part)
    "not_yaml": (b"description: [unclosed\n", [], "not valid YAML"),
    "not_utf8": (b"\xff\xfe\x00", [], "not a UTF-8 text file"),
    "empty_file": (b"", [], "description: required key is missing"),
    "top_level_list": (b"- seed\n", [], "expected a mapping at the top level, got list"),
    "missing_file": (None, [], "study.yaml: no such config file"),
    "unknown_scale": (GOOD_STUDY.encode(), ["--scale", "smok"], "unknown scale 'smok' (did you mean 'smoke'?)"),
    "override_without_value": (GOOD_STUDY.encode(), ["--set", "seed"], "override 'seed': expected key=value"),
    "override_unknown_key": (GOOD_STUDY.encode(), ["--set", "optim.lrr=1"], "optim.lrr: unknown key (did you mean 'lr'?)"),
    "override_of_an_axis": (GOOD_STUDY.encode(), ["--set", "seed=3"], "'seed' is varied by axis 'seed'"),
    "negative_cpus": (GOOD_STUDY.encode(), ["--cpus-per-trial", "-1"], "--cpus-per-trial: expected a number > 0, got -1"),
    "nan_gpus": (GOOD_STUDY.encode(), ["--gpus-per-trial", "nan"], "--gpus-per-trial: expected a number >= 0, got nan"),
    "duplicate_key": (GOOD_STUDY.encode() + b"description: y\n", [], "duplicate key 'description' (first on line 1"),
    "alias_bomb": (GOOD_STUDY.encode() + b"set: &a {x: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}\n"
                   + b"".join(f"k{i}: &k{i} [{', '.join(['*a' if i == 0 else f'*k{i - 1}'] * 20)}]\n".encode()
                              for i in range(5)), [], "values through YAML aliases (at most 100,000)"),
}


@pytest.mark.parametrize("case", list(STUDY_FILES))
def test_malformed_study_file_or_argument_exit_2_and_writes_nothing(case, project, capsys, monkeypatch):
    text, extra, message = STUDY_FILES[case]
    monkeypatch.chdir(project)
    path = project / "study.yaml"
    if text is not None:
        path.write_bytes(text)
    before = snapshot(project)
    args = ["study", "run", str(path), "--root", str(project)]
    args += extra if "--scale" in extra else ["--scale", "smoke", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("udabench study: error: "), err
    assert snapshot(project) == before


def test_a_data_error_from_the_driver_is_exit_2_through_python_m_too(project):
    """`python -m harness.cli` and the `udabench` script are one program: the driver's usage errors
    (here: data that does not exist) are one line and exit code 2 in both, never a traceback."""
    study = project / "study.yaml"
    study.write_text(GOOD_STUDY)
    shutil.rmtree(project / "datasets")
    before = snapshot(project)
    for cmd in ([sys.executable, "-m", "harness.cli"], [str(Path(sys.executable).parent / "udabench")]):
        r = subprocess.run([*cmd, "study", "run", str(study), "--scale", "smoke", "--root", str(project)],
                           capture_output=True, text=True, cwd=project, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        assert "synthetic dataset folder not found" in r.stderr and "udabench data synth" in r.stderr
    assert snapshot(project) == before


# --------------------------------------------------------------------------------------------------
# bad data: named before anything runs; the MLflow store is not touched

def _store_with_a_run(root: Path) -> None:
    """A project MLflow store that already holds a finished run (what must stay as it is)."""
    from harness.study import tracking

    uri = tracking.default_tracking_uri(root)
    exp = tracking.ensure_experiment(uri, "earlier", root)
    run = tracking.TrialRun.open(uri, exp, "t0", "earlier.smoke.x", "seed=0", {"study": "earlier"}, {"seed": "0"})
    run.log_metrics({"target_miou": 12.5}, step=2)
    run.finish({"seed": 0}, {"target_miou": 12.5})


def _damage(data: Path, damage: str, name: str = "00005.png") -> Path:
    import numpy as np
    from PIL import Image

    if damage == "truncated_png":
        path = data / "target" / "train" / "images" / "00011.png"
        path.write_bytes(path.read_bytes()[:-30])
    elif damage == "label_values":  # ids that are not trainIds (19..254), as an unconverted set has
        path = data / "source" / "train" / "labels" / name
        label = np.asarray(Image.open(path)).copy()
        label[:4, :4] = 26
        path.unlink()
        Image.fromarray(label).save(path)
    elif damage == "label_size":
        path = data / "source" / "train" / "labels" / name
        label = Image.open(path)
        resized = label.resize((label.width // 2, label.height // 2), Image.NEAREST)
        path.unlink()
        resized.save(path)
    else:
        path = data / "source" / "train" / "labels" / "00005.png"
        path.unlink()
        path = data / "source" / "train" / "images" / "00005.png"  # the image whose label is missing
    return path


DAMAGE_MESSAGE = {"truncated_png": "truncated PNG", "missing_label": "image has no label",
                  "label_values": "label values 26 are not trainIds", "label_size": "label size 64x32 differs"}


@pytest.mark.parametrize("damage", list(DAMAGE_MESSAGE))
def test_bad_dataset_is_named_before_ray_starts_and_the_store_is_unchanged(damage, tmp_path, synth_root, capsys):
    data = tmp_path / "datasets" / "synthetic"
    shutil.copytree(synth_root, data)
    bad = _damage(data, damage)
    _store_with_a_run(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(f"""\
        description: a study on damaged data
        config: {CONFIGS / 'daformer.yaml'}
        grid: {{seed: [0, 1]}}
        """))
    before = snapshot(tmp_path)

    assert main(["study", "run", str(study), "--scale", "smoke", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err, err
    assert DAMAGE_MESSAGE[damage] in err
    assert "study/seed=0: data." in err  # which trial and which part of its config
    assert snapshot(tmp_path) == before  # mlflow.db byte for byte, no ray_results/
    assert not (tmp_path / "ray_results").exists()

    domain = "target" if damage == "truncated_png" else "source"
    assert main(["data", "verify", "--dataset", "synthetic", "--root", str(data), "--domain", domain, "--split", "train"]) == 2
    err = capsys.readouterr().err
    verify = {"truncated_png": "unreadable or truncated"}.get(damage, DAMAGE_MESSAGE[damage])
    assert str(bad) in err and verify in err, err


@pytest.mark.parametrize("damage", ["label_values", "label_size"])
def test_a_bad_label_met_during_train_is_one_line_naming_the_file(damage, tmp_path, synth_root, capsys, monkeypatch):
    """`udabench train` does not pre-read every label: the loader checks each one it reads."""
    data = tmp_path / "datasets" / "synthetic"
    shutil.copytree(synth_root, data)
    for i in range(16):  # every source label, so the first batch meets one
        _damage(data, damage, f"{i:05d}.png")
    monkeypatch.chdir(tmp_path)
    rc = main(["train", str(CONFIGS / "daformer.yaml"), "--scale", "smoke", "--output", str(tmp_path / "out"),
               "--set", "schedule.iterations=2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert DAMAGE_MESSAGE[damage] in err and "datasets/synthetic/source/train/labels/000" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_crop_larger_than_the_images_is_refused_before_anything_runs(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    before = snapshot(project)
    args = ["--scale", "smoke", "--set", "data.crop=[96,96]"]  # the tiny set is 128x64
    assert main(["train", str(CONFIGS / "daformer.yaml"), *args, "--output", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert "data.source: crop (height, width) (96, 96) is larger than its images" in err, err
    assert "128x64" in err and "source/train/images/00000.png" in err
    study = project / "study.yaml"
    study.write_text(GOOD_STUDY)
    before = snapshot(project)
    assert main(["study", "run", str(study), "--root", str(project), *args]) == 2
    assert "crop (height, width) (96, 96) is larger than its images" in capsys.readouterr().err
    assert snapshot(project) == before


@pytest.mark.parametrize("content, message", [
    (b"\x80\x02not a zip archive at all", "not a readable udabench checkpoint, truncated or corrupted?"),
    ("truncated", "not a readable udabench checkpoint, truncated or corrupted?"),
    ({"weights": 1}, "not a udabench training checkpoint (expected a dict with 'config', 'model' and 'iteration')"),
])
def test_train_resume_from_a_bad_checkpoint_is_exit_2_and_writes_nothing(content, message, project, capsys,
                                                                          monkeypatch):
    import torch

    path = project / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        torch.save(content, path)
    else:
        torch.save({"config": {}, "model": {"w": torch.zeros(1000)}, "iteration": 3}, path)
        path.write_bytes(path.read_bytes()[:2000])
    monkeypatch.chdir(project)
    before = snapshot(project)
    assert main(["train", str(CONFIGS / "daformer.yaml"), "--scale", "smoke", "--resume", str(path),
                 "--output", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"udabench train: error: --resume: {path}: {message}"), err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(project) == before


def test_override_values_are_yaml_1_2(capsys):
    """`010` is 10 (YAML 1.1 read it as octal 8), `1e-5` a number (1.1: a string), `yes` a string."""
    assert main(["train", "--set", "seed=010", "--set", "optim.lr=1e-5", "--set", "name=yes", "--print-config"]) == 0
    cfg = __import__("yaml").safe_load(capsys.readouterr().out)
    assert cfg["seed"] == 10 and cfg["optim"]["lr"] == 1e-5 and cfg["name"] == "yes"

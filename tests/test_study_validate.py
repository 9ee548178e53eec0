"""Study files: every shipped study validates at every scale; bad files report every problem with its
path in the file, exit with code 2 and write nothing; grids expand in a documented merge order."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.scales import SCALES
from harness.study.load import load_study
from harness.study.spec import StudyError
from harness.study.trials import study_summary

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "studies").glob("*.yaml"))
CONFIGS = REPO / "studies" / "configs"


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("@CONFIGS@", str(CONFIGS)))
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_shipped_studies_exist_and_say_what_they_answer():
    names = {p.stem for p in SHIPPED}
    assert {"main", "mask_ratio", "rebuilder", "mim_targets", "aux_tasks", "search_lambda_mask"} <= names
    for path in SHIPPED:
        study = load_study(path, "smoke")
        assert len(study.spec.description.split()) >= 15, path
        assert set(study.spec.expected_runtime) == set(SCALES), f"{path}: expected_runtime for every scale"


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_study_validates(path, scale):
    study = load_study(path, scale)
    if study.is_search:
        assert study.spec.search.num_samples >= 2
        return
    trials = study.trials()
    assert len({t.hash for t in trials}) == len(trials), "two trials with the same config"
    for t in trials:
        for name, value in t.point.items():
            assert study.axes[name].overlay(value) is not None
    if scale == "paper":
        assert {t.config.data.source.name for t in trials} == {"gta5"}
        assert {t.config.schedule.iterations for t in trials} == {40000}


def test_paper_scale_uses_the_paper_backbones():
    study = load_study(REPO / "studies" / "main.yaml", "paper")
    backbones = {t.config.model.arch: t.config.model.backbone for t in study.trials()}
    assert backbones == {"deeplabv2": "resnet101c", "daformer": "pvt_v2_b5", "hrda": "pvt_v2_b5"}
    weights = {t.config.model.arch: t.config.model.pretrained for t in study.trials()}  # each its own file
    assert weights == {"deeplabv2": "pretrained/resnet101_v1c.pth", "daformer": "pretrained/mit_b5.pth",
                       "hrda": "pretrained/mit_b5.pth"}
    smoke = load_study(REPO / "studies" / "main.yaml", "smoke")
    assert {t.config.model.backbone for t in smoke.trials()} == {"resnet18", "pvt_v2_b0"}
    assert (study.resources(), smoke.resources()) == ({"cpu": 4, "gpu": 1}, {"cpu": 1, "gpu": 0})


# --------------------------------------------------------------------------------------------------
# mistakes: each is reported with its path in the file, all at once

BAD = {
    "value_out_of_range": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {mask_ratio: [0.1, 0.5, 1.2]}
        """, ["grid.mask_ratio[2]: expected a number in [0, 1), got 1.2"]),
    "unknown_axis": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {maskratio: [0.1]}
        """, ["grid.maskratio: unknown axis (did you mean 'mask_ratio'?)"]),
    "unknown_top_key": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        gird: {seed: [0]}
        """, ["gird: unknown key (did you mean 'grid'?)", "grid: a study needs a 'grid'"]),
    "missing_description": ("""
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {seed: [0]}
        """, ["description: required key is missing"]),
    "missing_config_file": ("""
        description: x
        config: configs/nope.yaml
        grid: {seed: [0]}
        """, ["config: ", "~configs/nope.yaml: no such config file"]),
    "bad_literal": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {preset: [tiny, huge]}
        """, ["grid.preset[1]: expected one of 'tiny', 'small', 'base', got 'huge'"]),
    "duplicate_value": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {seed: [0, 1, 1]}
        """, ["grid.seed[2]: duplicate value 1"]),
    "unknown_architecture": ("""
        description: x
        config: @CONFIGS@/base.yaml
        grid: {arch: [deeplabv2, deeplab]}
        """, ["grid.arch[1]: unknown model architecture 'deeplab' (did you mean 'deeplabv2'?)"]),
    "unknown_aux_task": ("""
        description: x
        config: @CONFIGS@/base.yaml
        grid: {aux: [none, mfn]}
        """, ["grid.aux[1]: unknown aux 'mfn' (did you mean 'mfm'?)"]),
    "bad_set_path": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        set: {optim.lrr: 0.1}
        grid: {seed: [0]}
        """, ["set.optim.lrr: 'optim.lrr' is not a config field (did you mean 'lr'?)"]),
    "bad_axis_definition": ("""
        description: x
        config: @CONFIGS@/base.yaml
        axes: {depth: model.archh}
        grid: {seed: [0]}
        """, ["axes.depth: 'model.archh' is not a config field (did you mean 'arch'?)"]),
    "task_without_pseudo_labels": ("""
        description: x
        config: @CONFIGS@/base.yaml
        grid: {host: [source_only, dacs], aux: [none, mfm]}
        """, ["grid (trial 1: host=source_only,aux=mfm): method.aux.mfm: needs the teacher's pseudo-labels"]),
    "grid_and_search": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {seed: [0]}
        search: {num_samples: 2, params: {lambda: {type: loguniform, low: 0.1, high: 10}}}
        """, ["search: a study has either a 'grid' or a 'search' block, not both"]),
    "search_ranges": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        search:
          metric: target_mio
          num_samples: 0
          params:
            lambda: {type: loguniform, low: 0, high: 10}
            mask_ratio: {type: uniform, low: 0.2, high: 1.5}
            preset: {type: choice, values: [tiny, giant]}
        """, ["search.metric: unknown metric 'target_mio' (did you mean 'target_miou'?)",
              "search.num_samples: expected an integer >= 1, got 0",
              "search.params.lambda.low: loguniform needs low > 0, got 0",
              "search.params.mask_ratio.high: expected a number in [0, 1), got 1.5",
              "search.params.preset.values[1]: expected one of 'tiny', 'small', 'base', got 'giant'"]),
    "bad_resources_and_runtime": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        expected_runtime: {smok: 1 s}
        resources: {cpu: 0}
        grid: {seed: [0]}
        """, ["resources.cpu: expected a number > 0, got 0",
              "expected_runtime.smok: unknown scale (did you mean 'smoke'?)"]),
    "bad_model_option": ("""
        description: x
        config: @CONFIGS@/deeplabv2.yaml
        grid: {model.options.output_strid: [8]}
        """, ["grid.model.options.output_strid[0]: model.options: output_strid: unknown key"]),
    "at_scale_adds_values": ("""
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {mask_ratio: [0.2, 0.4], seed: [0, 1]}
        at_scale:
          cpu: {grid: {mask_ratoi: [0.2], seed: [0, 5]}, serch: {num_samples: 2}}
          cpuu: {search: {num_samples: 2}}
        """, ["at_scale.cpu.grid.mask_ratoi: not an axis of this study's grid (did you mean 'mask_ratio'?)",
              "at_scale.cpu.grid.seed[1]: 5 is not a value of grid.seed (0, 1); at_scale only selects values",
              "at_scale.cpu.serch: unknown key (did you mean 'search'?)",
              "at_scale.cpuu: unknown scale (did you mean 'cpu'?)",
              "at_scale.cpuu.search: this study has no 'search' block"]),
    "grid_blocks": ("""
        description: x
        config: @CONFIGS@/deeplabv2.yaml
        grid:
          - {host: [source_only, dacs], seed: [0, 1]}
          - {host: [dacs, dacz, dacs], seed: [2]}
          - {seed: [3], host: [dacs]}
          - {host: dacs, seed: [4]}
        """, ["grid[1].host[1]: unknown host method 'dacz' (did you mean 'dacs'?)",
              "grid[1].host[2]: duplicate value 'dacs'",
              "grid[2]: expected the axes of grid[0] (host, seed) in that order, got seed, host",
              "grid[3].host: expected a list of values, got 'dacs'"]),
    "grid_not_a_mapping": ("""
        description: x
        config: @CONFIGS@/deeplabv2.yaml
        grid: {seed: 3}
        """, ["grid.seed: expected a list of values, got 3"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_gives_every_message_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert main(["study", "validate", str(path), "--scale", "smoke"]) == 2
    err = capsys.readouterr().err
    for message in expected:  # "~text": anywhere in the message
        wanted = message[1:] if message.startswith("~") else f"{path}: {message}"
        assert wanted in err, f"missing: {message}\n{err}"
    assert main(["study", "run", str(path), "--scale", "smoke", "--root", str(tmp_path)]) == 2
    assert tree(tmp_path) == before  # no mlruns/, no ray_results/


def test_one_file_with_many_mistakes_reports_them_all(tmp_path):
    path = write(tmp_path, """
        name: has space
        descripton: typo
        config: @CONFIGS@/daformer_mfm.yaml
        set: {method.aux.mfm.options.mask_ratoi: 0.3}
        grid:
          mask_ratio: [-0.5, 0.3, high]
          preset: [tiny, huge]
          seed: [0, 0]
        """)
    with pytest.raises(StudyError) as e:
        load_study(path, "smoke")
    msg = str(e.value)
    for part in ("description: required key is missing", "descripton: unknown key (did you mean 'description'?)",
                 "name: 'has space'", "set.method.aux.mfm.options.mask_ratoi:", "(did you mean 'mask_ratio'?)",
                 "grid.mask_ratio[0]: expected a number in [0, 1), got -0.5",
                 "grid.mask_ratio[2]: expected a number in [0, 1), got 'high'",
                 "grid.preset[1]: expected one of 'tiny', 'small', 'base', got 'huge'",
                 "grid.seed[1]: duplicate value 0"):
        assert part in msg, f"missing: {part}\n{msg}"
    assert msg.splitlines()[0].endswith("8 problems")


def test_cli_run_of_a_bad_study_exits_2_fast_and_starts_nothing(tmp_path):
    path = write(tmp_path, BAD["value_out_of_range"][0])
    r = subprocess.run([sys.executable, "-m", "harness.cli", "study", "run", str(path), "--scale", "smoke",
                        "--root", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "grid.mask_ratio[2]: expected a number in [0, 1), got 1.2" in r.stderr
    assert "Ray" not in r.stderr + r.stdout  # never got as far as starting Ray
    assert tree(tmp_path) == ["study.yaml"]


def test_override_of_an_axis_path_is_refused(tmp_path):
    path = write(tmp_path, BAD["value_out_of_range"][0].replace("1.2", "0.9"))
    with pytest.raises(StudyError, match=r"--set: 'method.aux.mfm.options.mask_ratio' is varied by axis"):
        load_study(path, "smoke", ["method.aux.mfm.options.mask_ratio=0.3"])
    with pytest.raises(StudyError, match=r"unknown scale 'smok' \(did you mean 'smoke'\?\)"):
        load_study(path, "smok")


# --------------------------------------------------------------------------------------------------
# expansion

def test_grid_expands_in_file_order_with_merge_order_base_set_scale_axes_overrides(tmp_path):
    path = write(tmp_path, """
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        set:
          schedule.iterations: 999          # a scale overrides `set:`
          method.aux.mfm.weight: 0.5        # ... but not what the scale leaves alone
        axes:
          crop: data.crop
        grid:
          mask_ratio: [0.2, 0.6]
          crop: [[48, 48]]
          seed: [0, 1]
        """)
    with pytest.raises(StudyError, match=r"grid.crop\[0\]: expected a single value"):
        load_study(path, "smoke")
    path.write_text(path.read_text().replace("crop: [[48, 48]]", "model.backbone: [pvt_v2_b1]"))
    study = load_study(path, "smoke", ["eval.max_images=1"])
    trials = study.trials()
    assert [t.point for t in trials] == [
        {"mask_ratio": m, "model.backbone": "pvt_v2_b1", "seed": s} for m in (0.2, 0.6) for s in (0, 1)]
    cfg = trials[3].config
    assert cfg.method.aux["mfm"].options["mask_ratio"] == 0.6 and cfg.seed == 1
    assert cfg.method.aux["mfm"].weight == 0.5                 # set:
    assert cfg.schedule.iterations == SCALES["smoke"]["overlay"]["schedule"]["iterations"]  # scale > set
    assert cfg.model.backbone == "pvt_v2_b1"                   # axis > scale's backbone
    assert cfg.eval.max_images == 1                            # --set
    assert cfg.method.ema_alpha == 0.999                       # base config chain (daformer.yaml)
    assert trials[3].name == "mask_ratio=0.6,model.backbone=pvt_v2_b1,seed=1"
    assert cfg.name == f"{study.name}/{trials[3].name}"
    assert len({t.hash for t in trials}) == 4


def test_variant_axes_and_the_aux_axis(tmp_path):
    study = load_study(REPO / "studies" / "mim_targets.yaml", "smoke")
    by_target = {t.point["target"]: t.config for t in study.trials() if t.point["seed"] == 0}
    assert by_target["pixel"].method.aux["mim"].options == {"variant": "recon", "target": "pixel"}
    assert by_target["hog"].method.aux["mim"].options["target"] == "hog"
    assert set(by_target["feature"].method.aux) == {"mfm"}
    main_study = load_study(REPO / "studies" / "main.yaml", "smoke")
    aux = {t.point["aux"]: set(t.config.method.aux) for t in main_study.trials()}
    assert aux == {"none": set(), "contrastive": {"contrastive"}, "mim": {"mim"}, "mfm": {"mfm"}}


def test_cover_runs_every_axis_value_at_least_once():
    study = load_study(REPO / "studies" / "main.yaml", "smoke")
    cover = study.trials(cover=True)
    assert len(cover) == 4
    for axis, values in study.spec.grid.items():
        assert {t.point[axis] for t in cover} == set(values)


def test_search_points_resolve_with_their_types(tmp_path):
    study = load_study(REPO / "studies" / "search_lambda_mask.yaml", "smoke")
    cfg = study.resolve({"lambda": 2, "mask_ratio": 0.35})
    assert cfg.method.aux["mfm"].weight == 2.0 and cfg.method.aux["mfm"].options["mask_ratio"] == 0.35
    space = study.param_space()["point"]
    assert set(space) == {"lambda", "mask_ratio"}
    assert (space["lambda"].lower, space["lambda"].upper) == (0.1, 10.0)


def test_status_table_joins_trials_with_the_tracking_store(tmp_path, capsys):
    import json

    from harness.study import tracking

    path = write(tmp_path, """
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {seed: [0, 1, 2]}
        """)
    study = load_study(path, "smoke")
    t0, t1, _ = study.trials()
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.ensure_experiment(uri, study.name, tmp_path)
    tags = {"study": study.name, "scale": "smoke"}
    r0 = tracking.TrialRun.open(uri, exp, "a", "x", t0.name, {**tags, "config_hash": t0.hash}, {})
    for step, miou in ((2, 10.0), (4, 12.5), (6, 11.0)):
        r0.log_metrics({"target_miou": miou}, step)
    r0.finish({}, {})
    tracking.TrialRun.open(uri, exp, "b", "x", t1.name, {**tags, "config_hash": t1.hash}, {}).fail("boom")
    other = tracking.TrialRun.open(uri, exp, "c", "x", t1.name, {**tags, "config_hash": "elsewhere"}, {})
    other.finish({}, {})  # a run of another config: not a trial of this study

    assert main(["study", "status", str(path), "--scale", "smoke", "--root", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["seed"], r["state"], r["best_target_miou"]) for r in rows] == [
        (0, "FINISHED", 12.5), (1, "FAILED", None), (2, "pending", None)]
    assert main(["study", "status", str(path), "--scale", "smoke", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"study '{study.name}' at scale 'smoke': 3 trial(s);")
    assert {"1 finished", "1 failed", "1 pending"} <= {p.strip() for p in out[0].split(";")[1].split(",")}
    assert out[1].split() == ["seed", "state", "best_target_miou", "time_s", "run_id"]


def test_grid_blocks_run_the_union_of_their_products_once_each(tmp_path):
    path = write(tmp_path, """
        description: x
        config: @CONFIGS@/deeplabv2.yaml
        grid:
          - {host: [source_only, dacs, oracle], seed: [0, 1]}
          - {host: [source_only, dacs], seed: [1, 2, 3]}   # seed 1 of both: already in the first block
        at_scale:
          cpu: {grid: {host: [dacs], seed: [0, 3]}}
        """)
    study = load_study(path, "smoke")
    names = [t.name for t in study.trials()]
    assert names == [f"host={h},seed={s}" for h in ("source_only", "dacs", "oracle") for s in (0, 1)] + [
        f"host={h},seed={s}" for h in ("source_only", "dacs") for s in (2, 3)]
    assert study_summary(study) == "grid of 10 trial(s): host(3) x seed(2) + host(2) x seed(3)"
    cover = {(t.point["host"], t.point["seed"]) for t in study.trials(cover=True)}
    assert {h for h, _ in cover} == {"source_only", "dacs", "oracle"} and {s for _, s in cover} == {0, 1, 2, 3}
    assert len({t.hash for t in study.trials()}) == 10
    cpu = load_study(path, "cpu")  # at_scale selects within each block
    assert [t.name for t in cpu.trials()] == ["host=dacs,seed=0", "host=dacs,seed=3"]
    # a point of a block is the same trial as in a plain grid (its finished runs are found again)
    plain = write(tmp_path, """
        description: x
        config: @CONFIGS@/deeplabv2.yaml
        grid: {host: [source_only, dacs], seed: [2, 3]}
        """, "plain.yaml")
    assert [t.hash for t in load_study(plain, "smoke").trials()] == [t.hash for t in study.trials()[6:]]


def test_at_scale_selects_a_subset_at_that_scale_only(tmp_path):
    path = write(tmp_path, """
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        grid: {mask_ratio: [0.2, 0.4, 0.6], seed: [0, 1, 2]}
        at_scale:
          cpu: {grid: {mask_ratio: [0.6, 0.2]}}   # file order is kept
          smoke: {grid: {seed: [1]}}
        """)
    points = {scale: [t.point for t in load_study(path, scale).trials()] for scale in ("smoke", "demo", "cpu")}
    assert points["smoke"] == [{"mask_ratio": m, "seed": 1} for m in (0.2, 0.4, 0.6)]
    assert len(points["demo"]) == 9
    assert points["cpu"] == [{"mask_ratio": m, "seed": s} for m in (0.2, 0.6) for s in (0, 1, 2)]
    search = write(tmp_path, """
        description: x
        config: @CONFIGS@/daformer_mfm.yaml
        search: {num_samples: 16, params: {mask_ratio: {type: uniform, low: 0.1, high: 0.9}}}
        at_scale: {cpu: {search: {num_samples: 6}}}
        """, "search.yaml")
    assert load_study(search, "cpu").spec.search.num_samples == 6
    assert load_study(search, "demo").spec.search.num_samples == 16
    search.write_text(search.read_text().replace("num_samples: 6", "num_samples: 20"))
    with pytest.raises(StudyError, match=r"at_scale.cpu.search.num_samples: expected an integer in \[1, 16\]"):
        load_study(search, "demo")  # every entry is checked, whatever the scale

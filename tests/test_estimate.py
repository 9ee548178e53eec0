"""`udabench study estimate`: trials grouped by what sets their cost, one real Trainer timed per group,
the trials scheduled on the concurrent slots in file order."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.study import estimate as est
from harness.study.load import load_study

CONFIGS = Path(__file__).resolve().parents[1] / "studies" / "configs"


@pytest.fixture
def project(tmp_path, synth_root):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "synthetic").symlink_to(synth_root)
    return tmp_path


def write(project: Path, text: str) -> Path:
    path = project / "s.yaml"
    path.write_text(textwrap.dedent(text).replace("@CONFIGS@", str(CONFIGS)))
    return path


STUDY = """
    description: cost groups
    config: @CONFIGS@/daformer.yaml
    grid:
      aux: [none, mfm]
      seed: [0, 1, 2]
    """


def test_groups_are_what_sets_the_cost_not_seeds_or_weights(project):
    study = load_study(write(project, STUDY), "smoke")
    keys = [est.cost_key(t.config) for t in study.trials()]
    assert len(set(keys)) == 2 and keys[:3] == [keys[0]] * 3
    cfg = study.trials()[3].config
    other = cfg.model_copy(deep=True)
    other.method.aux["mfm"].weight = 7.0
    other.optim.lr = 1.0
    assert est.cost_key(other) == est.cost_key(cfg)
    other.method.aux["mfm"].options["preset"] = "tiny"
    assert est.cost_key(other) != est.cost_key(cfg)


def test_wall_time_places_trials_in_file_order_on_the_slots():
    a = est.GroupCost("a", 2, startup_s=0, step_s=1.0, eval_s=0, iterations=10, evaluations=1)  # 10 s
    b = est.GroupCost("b", 1, startup_s=1, step_s=1.0, eval_s=2, iterations=5, evaluations=2)   # 10 s
    c = est.GroupCost("c", 1, startup_s=0, step_s=3.0, eval_s=0, iterations=10, evaluations=1)  # 30 s
    e = est.Estimate("s", "cpu", trials=4, concurrency=2, contention=1.0, groups=[a, b, c], order=[0, 0, 1, 2])
    assert e.cpu_s == 60
    assert e.wall_s() == 40  # a|a, then b and c start at 10: c ends at 40
    e.order = [2, 0, 0, 1]
    assert e.wall_s() == 30  # c on one slot; a, a, b one after another on the other
    e.concurrency, e.contention = 1, 1.25
    assert e.wall_s() == pytest.approx(60 * 1.25)


def test_estimate_times_a_real_trainer_per_group_and_writes_nothing(project, capsys):
    path = write(project, STUDY)
    out = project / "est.json"
    assert main(["study", "estimate", str(path), "--scale", "smoke", "--root", str(project), "--steps", "2",
                 "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "timing daformer/pvt_v2_b0 dacs aux=mfm (3 trial(s))" in printed.err
    assert "6 trial(s), 2 cost group(s)" in printed.out and "expected wall time" in printed.out
    [res] = json.loads(out.read_text())
    assert res["trials"] == 6 and [g["trials"] for g in res["groups"]] == [3, 3]
    for g in res["groups"]:
        assert g["step_s"] > 0 and g["eval_s"] > 0 and g["iterations"] == 4 and g["evaluations"] == 2
        assert g["trial_s"] == pytest.approx(g["startup_s"] + 4 * g["step_s"] + 2 * g["eval_s"])
    # the MFM step does more work than the plain DACS step
    assert res["groups"][1]["step_s"] > res["groups"][0]["step_s"]
    assert sorted(p.name for p in project.iterdir()) == ["datasets", "est.json", "s.yaml"]  # no mlruns etc.


def test_a_search_is_estimated_at_the_middle_of_its_ranges(project):
    path = write(project, """
        description: a search
        config: @CONFIGS@/daformer_mfm.yaml
        search:
          metric: target_miou
          mode: max
          num_samples: 5
          params:
            lambda: {type: loguniform, low: 0.1, high: 10.0}
            mask_ratio: {type: uniform, low: 0.2, high: 0.6}
        """)
    trials = est.study_trials(load_study(path, "smoke"))
    assert len(trials) == 5
    assert trials[0].config.method.aux["mfm"].options["mask_ratio"] == pytest.approx(0.4)
    assert trials[0].config.method.aux["mfm"].weight == pytest.approx(1.0)


@pytest.mark.parametrize("args", [["--steps", "0"], ["--concurrency", "0"], ["--contention", "0.5"]])
def test_bad_arguments_exit_2(project, args, capsys):
    path = write(project, STUDY)
    assert main(["study", "estimate", str(path), "--scale", "smoke", "--root", str(project), *args]) == 2
    assert args[0] in capsys.readouterr().err


def test_measurements_are_shared_between_studies_and_scales(project, capsys):
    """demo and cpu share their cost groups (same model and data sizes): each group is timed once, and
    the scale with more iterations and evaluated images gets the longer estimate."""
    path = write(project, STUDY)
    out = project / "est.json"
    assert main(["study", "estimate", str(path), str(path), "--scale", "smoke", "--scale", "demo",
                 "--root", str(project), "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("timing ") == 4  # 2 groups at smoke, 2 at demo (other crops); repeats reuse them
    smoke, demo, smoke2, demo2 = json.loads(out.read_text())
    assert (smoke["scale"], demo["scale"]) == ("smoke", "demo") and smoke2 == {**smoke2, "wall_s": smoke["wall_s"]}
    assert demo2["wall_s"] == demo["wall_s"] > smoke["wall_s"]
    assert demo["groups"][0]["iterations"] == 300 and demo["groups"][0]["evaluations"] == 1


def test_longest_first_times_each_group_and_keeps_file_order_among_equals(project):
    study = load_study(write(project, STUDY), "smoke")
    said: list[str] = []
    order = est.longest_first(study.trials(), project, progress=said.append)
    assert len(said) == 2  # one timing per cost group
    assert [t.point for t in order] == [{"aux": a, "seed": s} for a in ("mfm", "none") for s in (0, 1, 2)]
    one = [t for t in study.trials() if t.point["aux"] == "none"]
    assert est.longest_first(one, project, progress=said.append) == one and len(said) == 2  # nothing timed


def test_estimate_with_longest_places_the_costliest_first(project):
    """Measurements taken from the cache (no timing): the DACS group costs 1 s a step, MFM 3 s."""
    study = load_study(write(project, STUDY), "smoke")
    dacs, mfm = study.trials()[0].config, study.trials()[3].config
    cache = {est.cost_key(dacs): est.Measurement(0, 1.0, 0, 0), est.cost_key(mfm): est.Measurement(0, 3.0, 0, 0)}
    plain = est.estimate(study, project, concurrency=2, contention=1.0, cache=dict(cache), progress=None)
    ranked = est.estimate(study, project, concurrency=2, contention=1.0, cache=dict(cache), progress=None,
                          longest=True)
    assert plain.order == [0, 0, 0, 1, 1, 1] and ranked.order == [1, 1, 1, 0, 0, 0]
    # 4 steps a trial (4 s and 12 s) on 2 slots: file order ends at 28 s, the costliest first at 24 s
    assert (plain.wall_s(), ranked.wall_s()) == (28, 24)

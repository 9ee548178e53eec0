"""Model selection (issue 19): the label-free criteria on hand-made predictions with known values, the
criteria a smoke run logs at each evaluation (without changing its training), the weights kept by
iteration, and the report's checkpoint rules and selection table on an MLflow store whose best checkpoints
are known (runs written with the MLflow client in the tracking schema)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.cli import main
from harness.engine import criteria

# --------------------------------------------------------------------------------------------------
# the criteria on hand-made predictions


def _onehot(labels: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    """Logits (B x C x H x W) certain of `labels` (B x H x W)."""
    return scale * nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def test_entropy_and_information_maximization_known_values():
    c = 19
    uniform = torch.softmax(torch.zeros(1, c, 4, 4), 1)
    assert criteria.mean_entropy(uniform) == pytest.approx(math.log(c), rel=1e-6)
    assert criteria.information_maximization(uniform) == pytest.approx(0.0, abs=1e-6)  # diverse, unsure
    halves = torch.zeros(1, 4, 4, dtype=torch.long)
    halves[..., 2:] = 1
    certain = torch.softmax(_onehot(halves, c), 1)
    assert criteria.mean_entropy(certain) == pytest.approx(0.0, abs=1e-6)
    assert criteria.information_maximization(certain) == pytest.approx(math.log(2), rel=1e-5)  # 2 classes
    one_class = torch.softmax(_onehot(torch.zeros(1, 4, 4, dtype=torch.long), c), 1)
    assert criteria.information_maximization(one_class) == pytest.approx(0.0, abs=1e-6)  # certain, collapsed
    # two classes at 3:1 on each pixel: H = -(.75 ln .75 + .25 ln .25) per pixel
    p = torch.zeros(1, 2, 2, 2)
    p[:, 0], p[:, 1] = 0.75, 0.25
    assert criteria.mean_entropy(p) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-6)


def test_agreement_miou_known_values():
    a = torch.tensor([0, 0, 1, 1])
    b = torch.tensor([0, 1, 1, 1])
    counts = criteria.agreement_counts(a, b, 19)
    assert counts.sum() == 4 and counts[0, 1] == 1
    # class 0: 1 pixel both / 2 either; class 1: 2 / 3; classes neither uses do not count
    assert criteria.agreement_miou(counts) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert criteria.agreement_miou(criteria.agreement_counts(a, a, 19)) == pytest.approx(100.0)
    assert criteria.agreement_miou(criteria.agreement_counts(a, 1 - a, 19)) == pytest.approx(0.0)


class _Halves(nn.Module):
    """Class `left` on the left half of the image and `right` on the right half, whatever the pixels."""

    def __init__(self, left: int = 0, right: int = 1, classes: int = 19) -> None:
        super().__init__()
        self.left, self.right, self.classes = left, right, classes
        self.norm = nn.BatchNorm2d(3)  # a buffer that changes when called in training mode

    def forward(self, x):
        self.norm(x)
        labels = torch.full(x.shape[:1] + x.shape[2:], self.left, dtype=torch.long)
        labels[..., x.shape[-1] // 2:] = self.right
        return _onehot(labels, self.classes)


class _Symmetric(_Halves):
    """One class on the outer quarters, another in the middle: the same map when flipped."""

    def forward(self, x):
        labels = torch.full(x.shape[:1] + x.shape[2:], self.left, dtype=torch.long)
        w = x.shape[-1]
        labels[..., w // 4: w - w // 4] = self.right
        return _onehot(labels, self.classes)


def _images(n: int = 3):
    """Loader items without labels: the criteria never need them."""
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (1, 3, 8, 16), generator=g, dtype=torch.uint8)} for _ in range(n)]


def test_compute_on_models_with_known_predictions():
    names = ["entropy", "im", "teacher_agreement", "consistency"]
    out = criteria.compute(_Halves(), _images(), "cpu", names, teacher=_Halves())
    assert out["criterion/entropy"] == pytest.approx(0.0, abs=1e-6)
    assert out["criterion/im"] == pytest.approx(math.log(2), rel=1e-5)
    assert out["criterion/teacher_agreement"] == pytest.approx(100.0)
    # the flipped view, flipped back, swaps the halves: no pixel agrees
    assert out["criterion/consistency"] == pytest.approx(0.0)
    out = criteria.compute(_Symmetric(), _images(), "cpu", names, teacher=_Halves(left=1, right=0))
    assert out["criterion/consistency"] == pytest.approx(100.0)
    assert 0 < out["criterion/teacher_agreement"] < 100
    # no teacher: no teacher agreement; an unknown criterion is refused
    assert set(criteria.compute(_Halves(), _images(), "cpu", names)) == {
        "criterion/entropy", "criterion/im", "criterion/consistency"}
    with pytest.raises(ValueError, match="unknown selection criterion 'accuracy'"):
        criteria.compute(_Halves(), _images(), "cpu", ["accuracy"])


def test_compute_leaves_models_and_rng_as_they_were():
    student, teacher = _Halves(), _Halves().train()  # a teacher whose BatchNorm runs on batch statistics
    student.train()
    before = teacher.norm.running_mean.clone()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    criteria.compute(student, _images(), "cpu", ["teacher_agreement", "consistency"], teacher=teacher)
    assert torch.equal(torch.rand(3), expected)  # the global RNG was not drawn from
    assert torch.equal(teacher.norm.running_mean, before) and teacher.norm.num_batches_tracked == 0
    assert student.training  # put back in its mode
    view = criteria.jitter_view(torch.full((2, 3, 4, 4), 100.0), [0, 1])
    assert torch.equal(view, criteria.jitter_view(torch.full((2, 3, 4, 4), 100.0), [0, 1]))  # same views


# --------------------------------------------------------------------------------------------------
# a smoke run logs them, and keeps its weights by iteration


def test_smoke_run_logs_the_criteria_at_each_evaluation_and_trains_the_same(smoke_config, tmp_path):
    from harness.engine import checkpoint as ckpt
    from harness.engine.training import train

    seen = []
    with_criteria = train(smoke_config(tmp_path / "a" / "run", "selection.images=3", "checkpoint_keep=all"),
                          on_eval=lambda it, m, d: seen.append((it, m)), progress=False)
    assert [it for it, _ in seen] == [2, 4]
    for _, m in seen:
        assert set(criteria.metric_name(c) for c in ("entropy", "im", "teacher_agreement", "consistency")) <= set(m)
        assert m["criterion/entropy"] >= 0 and 0 <= m["criterion/consistency"] <= 100
    without = train(smoke_config(tmp_path / "b" / "run", "selection.images=0"), progress=False)
    assert "criterion/entropy" not in without
    same = ("target_miou", "pixel_acc", "loss/sup", "loss/uda")
    assert {k: with_criteria[k] for k in same} == {k: without[k] for k in same}  # training untouched
    a, b = ckpt.load(tmp_path / "a" / "run" / "checkpoint"), ckpt.load(tmp_path / "b" / "run" / "checkpoint")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["host"][k], b["host"][k]) for k in a["host"])  # the teacher too

    kept = sorted(p.name for p in (tmp_path / "a" / "run" / "checkpoint").glob("iter_*.pt"))
    assert kept == ["iter_000002.pt", "iter_000004.pt"]
    assert not list((tmp_path / "b" / "run" / "checkpoint").glob("iter_*.pt"))  # `last`: none kept
    weights = ckpt.load(tmp_path / "a" / "run" / "checkpoint" / "iter_000002.pt")
    assert weights["iteration"] == 2 and weights["metrics"]["criterion/entropy"] == seen[0][1]["criterion/entropy"]
    from harness.cli.eval import load_model

    model, _ = load_model(tmp_path / "a" / "run" / "checkpoint" / "iter_000004.pt")  # deployable
    assert all(torch.equal(v, a["model"][k]) for k, v in model.state_dict().items())
    from harness.errors import UsageError

    with pytest.raises(UsageError, match="without optimiser state"):
        train(smoke_config(tmp_path / "a" / "run"), resume=tmp_path / "a" / "run" / "checkpoint" / "iter_000002.pt")


def test_checkpoint_keep_n_keeps_the_most_recent(tmp_path):
    from harness.engine import checkpoint as ckpt

    model = nn.Linear(2, 2)
    for it in (100, 200, 300):
        ckpt.keep({}, it, model, {"target_miou": 1.0}, tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_000200.pt", "iter_000300.pt"]
    assert ckpt.keep({}, 400, model, {}, tmp_path, "last") is None


def test_config_fields_are_checked_and_result_neutral():
    from harness.config import ConfigError, validate_schema

    base = validate_schema({})
    assert base.selection.images == 16 and base.checkpoint_keep == "last"
    other = validate_schema({"selection": {"images": 4, "criteria": ["entropy"]}, "checkpoint_keep": 3})
    assert other.hash() == base.hash()  # runs recorded before keep their config hash
    with pytest.raises(ConfigError, match="selection.criteria"):
        validate_schema({"selection": {"criteria": ["accuracy"]}})
    with pytest.raises(ConfigError, match="checkpoint_keep"):
        validate_schema({"checkpoint_keep": "best"})


# --------------------------------------------------------------------------------------------------
# the report: a store whose best checkpoints are known

STEPS = (100, 200, 300, 400, 500)


def _curve(seed: int) -> list[float]:
    """Target mIoU at each evaluation: best at step 300 for every run, lower at the end."""
    return [20.0 + seed, 30.0 + seed, 45.0 + 2 * seed, 38.0 + seed, 36.0 + seed]


def _log_runs(uri: str, study: str, seeds=(0, 1, 2, 3), with_criteria: bool = True) -> None:
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from harness.config import RunConfig
    from harness.study.tracking import flatten

    client = MlflowClient(uri)
    exp = client.create_experiment(study)
    for seed in seeds:
        cfg = RunConfig()
        cfg.seed = seed
        tags = {"study": study, "trial_id": f"{study}_{seed}", "axis.seed": str(seed), "scale": "cpu",
                "git_commit": "0" * 40, "git_dirty": "false", "data_hash": "synthetic-x", "config_hash": f"h{seed}"}
        run = client.create_run(exp, tags=tags)
        ts = int(time.time() * 1000)
        metrics = []
        for i, (step, miou) in enumerate(zip(STEPS, _curve(seed))):
            values = {"target_miou": miou, "iou/road": miou + 10, "pixel_acc": 50 + miou, "step_time": 0.1}
            if with_criteria:
                values["criterion/entropy"] = 3.0 - miou / 100  # lower is better: a perfect criterion
                values["criterion/im"] = -miou                  # higher is better: picks the worst
                values["criterion/consistency"] = 50.0          # constant: ties go to the last evaluation
                if seed != 3:                                   # run 3 has no teacher
                    values["criterion/teacher_agreement"] = float(i)  # rises: picks the last
            metrics += [Metric(k, v, ts + i, step) for k, v in values.items()]
        params = [Param(k, str(v)) for k, v in flatten(cfg.to_dict()).items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('selection') / 'mlflow.db'}"
    _log_runs(uri, "sel")
    _log_runs(uri, "old", with_criteria=False)
    return uri


def _report(uri, out, *args, study="sel"):
    return main(["report", study, "--tracking-uri", uri, "--out", str(out), "--no-figures", *args])


def test_default_report_says_last_and_compares_the_criteria(store, tmp_path):
    assert _report(store, tmp_path) == 0
    tables = tmp_path / "sel" / "tables"
    last = [c[-1] for c in map(_curve, range(4))]
    best = [max(c) for c in map(_curve, range(4))]
    main_csv = pd.read_csv(tables / "main.csv")
    assert main_csv["target_miou:mean"].iloc[0] == pytest.approx(np.mean(last))
    assert set(main_csv["checkpoint"]) == {"last evaluation"}
    assert "Checkpoint: the last evaluation of each run." in (tables / "main.md").read_text()
    assert "% Checkpoint: the last evaluation of each run." in (tables / "main.tex").read_text()
    page = (tmp_path / "sel" / "README.md").read_text()
    assert "Headline metric: target mIoU (%), last evaluation." in page
    assert page.count("Checkpoint: the last evaluation of each run.") >= 2  # every table of the page
    assert list(pd.read_csv(tables / "trials.csv")["checkpoint"]) == [500] * 4

    sel = pd.read_csv(tables / "selection.csv").set_index("rule")
    assert list(sel.index) == ["last", "oracle", "entropy", "im", "teacher_agreement", "consistency"]
    assert sel.loc["oracle", "target_miou:mean"] == pytest.approx(np.mean(best))
    assert not sel.loc["oracle", "label_free"] and sel.loc["entropy", "label_free"]
    # entropy ranks every evaluation as mIoU does: it picks each run's best, rho = 1
    assert sel.loc["entropy", "target_miou:mean"] == pytest.approx(np.mean(best))
    assert sel.loc["entropy", "picks_oracle"] == 1.0 and sel.loc["entropy", "gap_to_oracle"] == pytest.approx(0)
    assert sel.loc["entropy", "target_miou:gain_vs_last"] == pytest.approx(np.mean(best) - np.mean(last))
    assert sel.loc["entropy", "spearman"] == pytest.approx(1.0)
    assert sel.loc["entropy", "spearman_ci_low"] == pytest.approx(1.0)
    assert sel.loc["entropy", "evaluations"] == 20
    # im is mIoU reversed: the worst evaluation, rho = -1
    assert sel.loc["im", "target_miou:mean"] == pytest.approx(np.mean([min(c) for c in map(_curve, range(4))]))
    assert sel.loc["im", "spearman"] == pytest.approx(-1.0)
    assert sel.loc["consistency", "target_miou:mean"] == pytest.approx(np.mean(last))  # ties: the last
    assert sel.loc["teacher_agreement", "runs"] == 3 and sel.loc["teacher_agreement", "evaluations"] == 15
    md = (tables / "selection.md").read_text()
    assert "oracle: best target mIoU (uses target labels)" in md
    runs = pd.read_csv(tables / "selection_runs.csv")
    assert set(runs["oracle:step"]) == {300} and set(runs["entropy:step"]) == {300} and set(runs["im:step"]) == {100}


def test_select_oracle_reports_the_best_evaluation_labelled_as_oracle(store, tmp_path):
    assert _report(store, tmp_path, "--select", "oracle") == 0
    tables = tmp_path / "sel" / "tables"
    main_csv = pd.read_csv(tables / "main.csv")
    assert main_csv["target_miou:mean"].iloc[0] == pytest.approx(np.mean([max(c) for c in map(_curve, range(4))]))
    assert main_csv["iou/road:mean"].iloc[0] == pytest.approx(np.mean([max(c) + 10 for c in map(_curve, range(4))]))
    assert set(main_csv["checkpoint"]) == {"oracle selection (uses target labels)"}
    assert "**oracle selection**" in (tables / "main.md").read_text()
    page = (tmp_path / "sel" / "README.md").read_text()
    assert "> **Oracle selection (`--select oracle`)**" in page
    assert "Headline metric: target mIoU (%), oracle selection (uses target labels)." in page
    assert list(pd.read_csv(tables / "trials.csv")["checkpoint"]) == [300] * 4


def test_select_a_criterion_and_its_fallback(store, tmp_path):
    assert _report(store, tmp_path / "e", "--select", "entropy") == 0
    main_csv = pd.read_csv(tmp_path / "e" / "sel" / "tables" / "main.csv")
    assert main_csv["target_miou:mean"].iloc[0] == pytest.approx(np.mean([max(c) for c in map(_curve, range(4))]))
    assert "each run's evaluation with the lowest `entropy`" in (tmp_path / "e" / "sel" / "README.md").read_text()
    assert _report(store, tmp_path / "t", "--select", "teacher_agreement") == 0
    assert "1 of 4 runs did not log it and keep their last evaluation" in (
        tmp_path / "t" / "sel" / "tables" / "main.md").read_text()


def test_bad_rules_and_older_stores(store, tmp_path, capsys):
    assert main(["report", "sel", "--tracking-uri", store, "--out", str(tmp_path), "--select", "entropi"]) == 2
    err = capsys.readouterr().err
    assert "--select entropi" in err and "did you mean 'entropy'" in err and "oracle" in err
    assert _report(store, tmp_path, "--select", "entropy", study="old") == 2
    assert "no run logged `criterion/entropy`" in capsys.readouterr().err
    assert _report(store, tmp_path, study="old") == 0  # runs without criteria still report
    note = (tmp_path / "old" / "README.md").read_text()
    assert "**No label-free criteria were logged by these runs**" in note
    assert list(pd.read_csv(tmp_path / "old" / "tables" / "selection.csv")["rule"]) == ["last", "oracle"]


def test_spearman_and_its_bootstrap_over_runs():
    from scipy import stats

    from harness.report.selection import bootstrap_rhos, bootstrap_spearman, spearman

    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.integers(0, 5, 30).astype(float)  # ties
        y = x + rng.normal(0, 2, 30)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    groups = np.repeat(np.arange(10), 3)
    # the resampling unit is the run: each resample is the data of the drawn runs, a run drawn k times k times
    rhos, counts = bootstrap_rhos(x, y, groups, n=50)
    assert (counts.sum(1) == 10).all() and len(rhos) == 50
    for rho, k in zip(rhos, counts):
        idx = np.concatenate([np.flatnonzero(groups == g) for g in np.repeat(np.arange(10), k)])
        assert rho == pytest.approx(stats.spearmanr(x[idx], y[idx]).statistic, abs=1e-9)
    lo, hi = bootstrap_spearman(x, y, groups)
    assert lo <= spearman(x, y) <= hi and (lo, hi) == bootstrap_spearman(x, y, groups)  # seeded
    assert all(math.isnan(v) for v in bootstrap_spearman(x, y, np.zeros(30)))  # one run: no interval

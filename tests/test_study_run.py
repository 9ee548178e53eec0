"""Studies run for real: a local Ray (2 CPUs, one session shared by this module), the real training at
smoke scale on the tiny synthetic set, and a real sqlite MLflow store. Checks the MLflow schema of
ARCHITECTURE.md, skipping of finished trials, Optuna search, a failing trial, and interrupt + resume."""

from __future__ import annotations

import math
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.config import RunConfig
from harness.labels import CLASSES
from harness.study import tracking
from harness.study.load import load_study

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "studies" / "configs"
GATE = "UDABENCH_TEST_GATE"  # a folder where the blocking train below waits
TAGS = {"study", "trial_id", "git_commit", "git_dirty", "data_hash", "config_hash", "python", "torch", "cuda",
        "cpu", "cpu_capability", "device", "scale", "runtime.precision", "runtime.grad_scaler"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray for the module (start/stop costs seconds); run_study uses it and leaves it up.
    Workers can import this module (for the blocking train below): tests/ is on their PYTHONPATH."""
    from harness.study.session import ray_session

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", GATE)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), saved["PYTHONPATH"]) if p)
    os.environ[GATE] = str(tmp_path_factory.mktemp("gate"))
    try:
        with ray_session(tmp_path_factory.mktemp("ray"), num_cpus=2):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def project(tmp_path, synth_root):
    """A project folder: datasets/synthetic (the session's tiny set) and studies/."""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "synthetic").symlink_to(synth_root)
    (tmp_path / "studies").mkdir()
    return tmp_path


def write_study(project: Path, name: str, text: str) -> Path:
    path = project / "studies" / f"{name}.yaml"
    path.write_text(textwrap.dedent(text).replace("@CONFIGS@", str(CONFIGS)))
    return path


def runs_of(root: Path, study: str) -> list:
    uri = tracking.default_tracking_uri(root)
    exp = tracking.experiment_id(uri, study)
    return tracking.search(uri, exp) if exp else []


FOUR = """
    description: four smoke trials on both architectures
    config: @CONFIGS@/base.yaml
    axes:
      arch:
        deeplabv2: {model.arch: deeplabv2, method.ema_alpha: 0.99}
        daformer: {model.arch: daformer, method.ema_alpha: 0.999}
    grid:
      arch: [deeplabv2, daformer]
      seed: [0, 1]
    """


def test_smoke_study_four_trials_both_architectures_tracked_in_mlflow(ray_local, project, monkeypatch):
    from harness.study.runner import run_study

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_study(project, "four", FOUR)
    study = load_study(path, "smoke")
    out = run_study(study, project)
    assert (out.planned, out.finished, out.errored, out.interrupted) == (4, 4, 0, False)

    uri = tracking.default_tracking_uri(project)
    client = tracking.client(uri)
    runs = runs_of(project, "four")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    by_hash = {t.hash: t for t in study.trials()}
    assert {r.data.tags["config_hash"] for r in runs} == set(by_hash)
    exp = client.get_experiment_by_name("four")
    assert exp.artifact_location == (project / "mlruns" / "artifacts" / "four").resolve().as_uri()
    for r in runs:
        trial = by_hash[r.data.tags["config_hash"]]
        tags = r.data.tags
        assert TAGS <= set(tags), TAGS - set(tags)
        assert tags["study"] == "four" and tags["scale"] == "smoke" and tags["device"] == "cpu"
        assert tags["runtime.precision"] == "fp32" and tags["runtime.grad_scaler"] == "false"
        assert tags["axis.arch"] == trial.point["arch"] and tags["axis.seed"] == str(trial.point["seed"])
        assert len(tags["data_hash"]) == 16 and tags["git_commit"] != ""
        assert r.info.run_name == trial.name
        # params: the flattened resolved config
        assert r.data.params == tracking.flatten(trial.config.to_dict())
        assert r.data.params["model.arch"] == trial.point["arch"]
        # metrics: every evaluation, step = iteration
        history = client.get_metric_history(r.info.run_id, "target_miou")
        assert [m.step for m in history] == [2, 4]
        keys = set(r.data.metrics)
        assert {"target_miou", "target_miou16", "target_miou13", "pixel_acc", "throughput", "step_time",
                "peak_mem_mb", "iteration", "load_avg_5min"} <= keys  # the load beside the timings
        assert {k for k in keys if k.startswith("loss/")} and 0 <= r.data.metrics["target_miou"] <= 100
        # artifacts: the resolved config and the final per-class table
        folder = Path(client.download_artifacts(r.info.run_id, "", str(project / "dl" / r.info.run_id)))
        cfg = RunConfig.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
        assert cfg.hash() == trial.hash
        rows = (folder / "per_class.csv").read_text().splitlines()[1:]
        assert [row.split(",")[1] for row in rows] == list(CLASSES)
        for row in rows:
            key = "iou/" + row.split(",")[1].replace(" ", "_")
            value = r.data.metrics.get(key, math.nan)
            assert (row.split(",")[2] == "") if math.isnan(value) else float(row.split(",")[2]) == pytest.approx(value, abs=1e-4)
    assert (project / "ray_results" / out.ray_experiment / "udabench.json").is_file()
    from harness.study.session import _session_dir  # the trials' working copies left no checkpoint behind

    assert not list((_session_dir() / "artifacts").rglob("checkpoint.pt"))
    assert len(list((project / "ray_results" / out.ray_experiment).rglob("checkpoint.pt"))) == 4

    # again: every trial already finished -> nothing runs (Ray is not even asked)
    again = run_study(load_study(path, "smoke"), project)
    assert (again.skipped, again.ray_experiment, again.exit_code) == (4, None, 0)
    assert len(runs_of(project, "four")) == 4

    from harness.cli.study import status_rows

    path.write_text(path.read_text().replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    rows = status_rows(load_study(path, "smoke"), project)
    assert [(r["arch"], r["seed"], r["state"]) for r in rows] == [
        (a, s, "FINISHED" if s < 2 else "pending") for a in ("deeplabv2", "daformer") for s in (0, 1, 2)]
    assert all((r["best_target_miou"] is not None) == (r["state"] == "FINISHED") for r in rows)
    status_demo = status_rows(load_study(path, "demo"), project)
    assert {r["state"] for r in status_demo} == {"pending"}  # another scale: other configs


def test_optuna_search_of_three_trials(ray_local, project):
    from harness.study.runner import run_study

    path = write_study(project, "search3", """
        description: a small search
        config: @CONFIGS@/daformer_mfm.yaml
        set: {method.aux.mfm.options.preset: tiny}
        search:
          metric: target_miou
          mode: max
          num_samples: 3
          seed: 0
          params:
            lambda: {type: loguniform, low: 0.1, high: 10.0}
            mask_ratio: {type: uniform, low: 0.1, high: 0.9}
        """)
    out = run_study(load_study(path, "smoke"), project)
    assert (out.planned, out.finished, out.errored) == (3, 3, 0)
    runs = runs_of(project, "search3")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    points = {(r.data.tags["axis.lambda"], r.data.tags["axis.mask_ratio"]) for r in runs}
    assert len(points) == 3
    for r in runs:
        lam, ratio = float(r.data.tags["axis.lambda"]), float(r.data.tags["axis.mask_ratio"])
        assert 0.1 <= lam <= 10 and 0.1 <= ratio <= 0.9
        assert float(r.data.params["method.aux.mfm.weight"]) == pytest.approx(lam)
        assert float(r.data.params["method.aux.mfm.options.mask_ratio"]) == pytest.approx(ratio)
        assert "loss/mfm/ce" in r.data.metrics or any(k.startswith("loss/mfm") for k in r.data.metrics)


def test_a_failing_trial_is_recorded_failed_while_the_others_finish(ray_local, project):
    from harness.study.runner import run_study

    path = write_study(project, "diverge", """
        description: one trial diverges
        config: @CONFIGS@/daformer.yaml
        set: {method.host: source_only, data.rare_class_sampling: false}
        max_failures: 0
        grid:
          lr: [0.0002, 1.0e+30]
          seed: [0]
        """)
    study = load_study(path, "smoke", ["schedule.warmup=0", "schedule.iterations=6", "eval.interval=6"])
    out = run_study(study, project)
    assert (out.finished, out.errored, out.interrupted) == (1, 1, False)
    assert list(out.errors) == ["lr=1e+30,seed=0"] and "TrainingDiverged" in out.errors["lr=1e+30,seed=0"]
    runs = {r.data.tags["axis.lr"]: r for r in runs_of(project, "diverge")}
    assert runs["0.0002"].info.status == "FINISHED"
    failed = runs["1e+30"]
    assert failed.info.status == "FAILED"
    assert "TrainingDiverged: loss 'sup' is" in failed.data.tags["error"]
    assert [a.path for a in tracking.client(tracking.default_tracking_uri(project)).list_artifacts(
        failed.info.run_id)] == ["error.txt"]
    assert out.exit_code == 1


def test_a_trial_asking_for_more_than_the_cluster_has_is_refused_before_anything_is_written(
        ray_local, project):
    from harness.errors import UsageError
    from harness.study.runner import run_study
    from harness.study.spec import Resources

    path = write_study(project, "gpu", """
        description: needs a GPU
        config: @CONFIGS@/daformer.yaml
        resources: {cpu: 1, gpu: 1}
        grid: {seed: [0]}
        """)
    assert load_study(path, "paper").resources() == {"cpu": 1, "gpu": 1}
    study = load_study(path, "smoke")
    with pytest.raises(UsageError, match=r"asks for 1 GPU, the Ray cluster has 0"):
        run_study(study, project)
    study.spec.resources = Resources(cpu=3)
    with pytest.raises(UsageError, match=r"asks for 3 CPU, the Ray cluster has 2"):
        run_study(study, project)
    assert not (project / "ray_results").exists() and not (project / "mlruns").exists()


# --------------------------------------------------------------------------------------------------
# interrupt (Ctrl-C) and resume

def blocking_train(cfg, on_eval=None, resume=None):
    """The real training; seed 1 stops after its first evaluation while `<gate>/block` exists, so the
    test can interrupt the study at a known point (imported by the Ray workers)."""
    from harness.engine.training import train

    gate = Path(os.environ.get(GATE, "/nonexistent"))

    def hook(iteration, metrics, folder):
        on_eval(iteration, metrics, folder)
        if cfg.seed == 1 and (gate / "block").exists():
            (gate / "reached").touch()
            deadline = time.monotonic() + 120
            while (gate / "block").exists() and time.monotonic() < deadline:
                time.sleep(0.2)

    return train(cfg, on_eval=hook, resume=resume)


def test_interrupted_study_resumes_and_keeps_finished_trials(ray_local, project):
    from harness.study.runner import resume_study, run_study

    gate = Path(os.environ[GATE])
    path = write_study(project, "interrupt", """
        description: two trials, one at a time
        config: @CONFIGS@/daformer.yaml
        max_concurrent: 1
        grid:
          seed: [0, 1]
        """)
    (gate / "block").touch()

    def interrupt_when_blocked():
        deadline = time.monotonic() + 240
        while not (gate / "reached").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_blocked, daemon=True).start()
    out = run_study(load_study(path, "smoke"), project, train_fn="test_study_run:blocking_train")
    assert out.interrupted and out.finished == 1 and out.exit_code == 130
    before = {r.data.tags["axis.seed"]: r for r in runs_of(project, "interrupt")}
    assert before["0"].info.status == "FINISHED" and before["1"].info.status == "KILLED"

    (gate / "block").unlink()
    done = resume_study(path, project, "smoke")
    assert (done.finished, done.errored, done.interrupted) == (2, 0, False)
    after = {r.data.tags["axis.seed"]: r for r in runs_of(project, "interrupt")}
    assert len(after) == 2 and {r.info.status for r in after.values()} == {"FINISHED"}
    # the finished trial was kept as it was; the interrupted one continued from its checkpoint
    assert after["0"].info.run_id == before["0"].info.run_id
    assert after["0"].info.end_time == before["0"].info.end_time
    assert after["1"].info.run_id == before["1"].info.run_id
    assert after["1"].data.tags["resumed_from_checkpoint"] == "true" and after["1"].data.tags["attempt"] == "2"
    client = tracking.client(tracking.default_tracking_uri(project))
    assert [m.step for m in client.get_metric_history(after["1"].info.run_id, "target_miou")] == [2, 4]

    # a seed added to the study: only the new trial runs
    path.write_text(path.read_text().replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    more = run_study(load_study(path, "smoke"), project)
    assert (more.skipped, more.planned, more.finished) == (2, 1, 1)
    assert sorted(r.data.tags["axis.seed"] for r in runs_of(project, "interrupt")) == ["0", "1", "2"]


def test_finished_trials_run_again_when_their_data_changed(ray_local, tmp_path, synth_root, capsys,
                                                           monkeypatch):
    """A trial is done only when it finished on the data it would read now (tag data_hash): after the
    synthetic set is regenerated with another seed it runs again; with the data unchanged it is skipped."""
    import shutil

    from harness.cli.study import status_rows
    from harness.data.synthetic import SynthParams, generate, read_manifest
    from harness.study.runner import run_study

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "datasets" / "synthetic"
    shutil.copytree(synth_root, data)  # a copy: the session's set is shared
    (tmp_path / "studies").mkdir()
    path = write_study(tmp_path, "redata", """
        description: one trial, on data that change
        config: @CONFIGS@/daformer.yaml
        grid: {seed: [0]}
        """)
    first = run_study(load_study(path, "smoke"), tmp_path)
    assert (first.planned, first.finished, first.skipped) == (1, 1, 0)
    [old] = runs_of(tmp_path, "redata")

    params = SynthParams.model_validate(read_manifest(data)["params"])
    generate(params.model_copy(update={"seed": 1}), data)  # as `udabench data synth` would, another seed
    [row] = status_rows(load_study(path, "smoke"), tmp_path)
    assert (row["state"], row["run_id"]) == ("FINISHED (other data)", old.info.run_id[:8])
    capsys.readouterr()
    second = run_study(load_study(path, "smoke"), tmp_path)
    assert "1 finished trial(s) of 'redata' were made on other data" in capsys.readouterr().out
    assert (second.planned, second.finished, second.skipped) == (1, 1, 0)
    runs = runs_of(tmp_path, "redata")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    [new] = [r for r in runs if r.info.run_id != old.info.run_id]
    assert new.data.tags["config_hash"] == old.data.tags["config_hash"]
    assert new.data.tags["data_hash"] != old.data.tags["data_hash"]
    [row] = status_rows(load_study(path, "smoke"), tmp_path)
    assert (row["state"], row["run_id"]) == ("FINISHED", new.info.run_id[:8])

    # the data unchanged: nothing runs
    third = run_study(load_study(path, "smoke"), tmp_path)
    assert (third.skipped, third.ray_experiment) == (1, None)
    assert len(runs_of(tmp_path, "redata")) == 2


# --------------------------------------------------------------------------------------------------
# every shipped study, at smoke scale (lightning-hydra-template style: slow)

SHIPPED = sorted((REPO / "studies").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_study_runs_at_smoke_scale(ray_local, project, path):
    from harness.study.runner import run_study

    study = load_study(path, "smoke")
    started = time.monotonic()
    out = run_study(study, project)
    elapsed = time.monotonic() - started
    n = study.spec.search.num_samples if study.is_search else len(study.trials())
    assert (out.planned, out.finished, out.errored, out.interrupted) == (n, n, 0, False)
    runs = runs_of(project, study.name)
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    assert all(0 <= r.data.metrics["target_miou"] <= 100 for r in runs)
    print(f"\n{path.name}: {n} trials at smoke scale in {elapsed:.0f} s (shared Ray, 2 CPUs)")


ORDERED = """
    description: order of the trials
    config: @CONFIGS@/daformer.yaml
    max_concurrent: 1
    axes:
      aux:
        none: {}
        # four times the images a step, and two auxiliary tasks: heavier by far more than timing noise
        # on a busy machine (the auxiliary tasks alone flipped the order once in CI)
        heavy: {data.batch_size: 4, method.aux.mfm: {weight: 1.0}, method.aux.contrastive: {weight: 1.0}}
    grid:
      aux: [none, heavy]
      seed: [0]
    """


def test_order_longest_starts_the_costliest_trial_first(ray_local, project, capsys):
    """`study run --order longest` times each cost group here and starts the costliest first; with one
    trial at a time, MLflow's start times show Ray honoured the order."""
    from harness.cli import main

    path = write_study(project, "ordered", ORDERED)
    assert main(["study", "run", str(path), "--scale", "smoke", "--root", str(project), "--order", "longest"]) == 0
    out = capsys.readouterr().out
    assert "ordering trials longest first: timing 2/2" in out
    assert "start order: aux=heavy,seed=0, aux=none,seed=0" in out
    runs = sorted(runs_of(project, "ordered"), key=lambda r: r.info.start_time)
    assert [r.data.tags["axis.aux"] for r in runs] == ["heavy", "none"]
    assert runs[0].info.end_time <= runs[1].info.start_time  # one at a time


def test_resume_of_a_run_whose_train_function_moved_says_what_to_do(tmp_path):
    """A study interrupted under an older layout (its udabench.json names `harness.training:train`) is
    refused before Ray starts, with the command that finishes it (finished trials are skipped)."""
    import json

    from harness.cli import main
    from harness.errors import UsageError
    from harness.study.runner import META_FILE, resume_study

    study_file = REPO / "studies" / "demo.yaml"
    study = load_study(study_file, "smoke")
    exp = tmp_path / "ray_results" / f"{study.name}.smoke.old"
    exp.mkdir(parents=True)
    (exp / META_FILE).write_text(json.dumps({"scale": "smoke", "overrides": [], "train_fn": "harness.training:train",
                                             "study_file_hash": study.text_hash}))
    with pytest.raises(UsageError, match=r"'harness\.training:train'.*udabench study run .*demo\.yaml --scale smoke"):
        resume_study(study_file, tmp_path, experiment=exp)
    assert main(["study", "resume", str(study_file), "--root", str(tmp_path), "--scale", "smoke"]) == 2
    assert sorted(p.name for p in exp.iterdir()) == [META_FILE]  # nothing written


def test_weights_kept_by_iteration_travel_in_the_trials_tune_checkpoint(ray_local, project):
    """`checkpoint_keep: all` in a study: the newest Tune checkpoint folder of a trial holds the kept
    weights of every evaluation (the trial's working folder is removed when it ends)."""
    from harness.cli import main
    from harness.engine import checkpoint as ckpt

    path = write_study(project, "kept", """
        description: weights kept by iteration
        config: @CONFIGS@/daformer.yaml
        grid: {seed: [0]}
        """)
    assert main(["study", "run", str(path), "--scale", "smoke", "--root", str(project),
                 "--set", "checkpoint_keep=all"]) == 0
    [folder] = [p for p in (project / "ray_results").glob("kept.smoke.*/trial_*/checkpoint_*") if p.is_dir()]
    assert sorted(p.name for p in folder.glob("iter_*.pt")) == ["iter_000002.pt", "iter_000004.pt"]
    assert ckpt.load(folder / "iter_000002.pt")["iteration"] == 2

"""A config that runs but contradicts the recipe it borrows from is said so at start-up: the ImageNet
feature distance without ImageNet weights pulls the encoder towards its random initialisation."""

from __future__ import annotations

import warnings

import pytest

from harness.engine.resolve import RecipeWarning, load_config, recipe_warnings
from harness.scales import scale_overlay


def test_feature_distance_without_pretrained_weights_is_named():
    cfg = load_config(None, ["model.arch=daformer", "method.fd.weight=0.005"])
    (message,) = recipe_warnings(cfg)
    assert "method.fd.weight is 0.005" in message and "model.pretrained is null" in message
    assert "udabench weights list" in message


@pytest.mark.parametrize("overrides", [["method.fd.weight=0"], ["method.fd.weight=0.005", "model.pretrained=w.pth"]])
def test_no_warning_when_the_recipe_holds(overrides):
    assert recipe_warnings(load_config(None, ["model.arch=daformer", *overrides])) == []


def test_the_engine_warns_before_it_builds_the_model(synth_root, tmp_path):
    from harness.engine.training import Trainer

    data = [f"data.{part}.root={synth_root}" for part in ("source", "target", "val")]
    cfg = load_config(None, [*data, f"output={tmp_path}", "threads=1", "model.arch=daformer",
                             "method.fd.weight=0.005"], extra=scale_overlay("smoke", "daformer"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(cfg, progress=False)
    assert [str(w.message) for w in caught if w.category is RecipeWarning] == recipe_warnings(cfg)


def test_udabench_train_says_it_in_one_line(synth_root, tmp_path):
    """As a user sees it (a subprocess: pytest would capture the warning itself)."""
    import subprocess
    import sys

    data = [f"--set=data.{part}.root={synth_root}" for part in ("source", "target", "val")]
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "train", "--scale", "smoke", *data, f"--set=output={tmp_path}",
         "--set=model.arch=daformer", "--set=method.fd.weight=0.005", "--set=schedule.iterations=1",
         "--set=eval.interval=1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "udabench: warning: method.fd.weight is 0.005 but model.pretrained is null" in done.stderr
    assert "RecipeWarning" not in done.stderr

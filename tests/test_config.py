"""Run configs: typed, inheritable, overridable, and strict about mistakes."""

from __future__ import annotations

import pytest

from harness.config import ConfigError, save_config
from harness.engine.resolve import load_config


def test_defaults_are_the_reference_recipe():
    cfg = load_config()
    assert cfg.optim.lr == 6e-5 and cfg.optim.head_lr_mult == 10
    assert cfg.schedule.warmup == 1500 and cfg.schedule.iterations == 40000
    assert cfg.method.pseudo_threshold == 0.968


def test_variant_inherits_base_and_changes_one_field(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {arch: deeplabv2, backbone: resnet18}\nseed: 3\n")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\nmodel: {backbone: resnet50}\n")
    cfg = load_config(tmp_path / "variant.yaml")
    assert (cfg.model.arch, cfg.model.backbone, cfg.seed) == ("deeplabv2", "resnet50", 3)


def test_overrides_are_typed_and_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["schedule.iterations=12", "data.crop=[32, 48]", "method.host=source_only"])
    assert cfg.schedule.iterations == 12 and cfg.data.crop == (32, 48)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert cfg.hash() == load_config(tmp_path / "c.yaml", ["output=elsewhere"]).hash()
    assert cfg.hash() != load_config(tmp_path / "c.yaml", ["seed=1"]).hash()


@pytest.mark.parametrize("override, expected", [
    ("schedule.iteratons=3", "schedule.iteratons: unknown key (did you mean 'iterations'?)"),
    ("modle.arch=x", "modle: unknown key (did you mean 'model'?)"),
    ("schedule.iterations=abc", "schedule.iterations: Input should be a valid integer"),
    ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
    ("method.host=dac", "method.host: unknown host method 'dac' (did you mean 'dacs'?); valid:"),
    ("device=tpu", "device: Value error, expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("seed", "expected key=value"),
])
def test_mistakes_name_the_field_and_the_fix(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match=r"model.arch: unknown model architecture 'deeplab'.*valid: .*deeplabv2"):
        load_config(None, ["model.arch=deeplab"])


def test_aux_task_needs_a_pseudo_label_host():
    from methods import AUX_TASKS

    name = next(n for n in AUX_TASKS.names() if AUX_TASKS.get(n).needs_pseudo_labels)
    with pytest.raises(ConfigError, match="does not provide"):
        load_config(None, ["method.host=source_only", f"method.aux.{name}.weight=1"])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")


def test_partial_section_keeps_that_sections_defaults():
    cfg = load_config(None, ["data.val.root=/x", "data.target.root=/x"])
    assert (cfg.data.val.domain, cfg.data.val.split, cfg.data.val.root) == ("target", "val", "/x")
    assert (cfg.data.target.domain, cfg.data.target.split) == ("target", "train")


@pytest.mark.parametrize(("config", "sets", "backbone", "options"), [
    ("daformer.yaml", [], "pvt_v2_b0", {"embed_dim": 64}),
    ("deeplabv2.yaml", [], "resnet18", {"output_stride": 16, "norm": "group"}),
    ("base.yaml", ["model.arch=daformer"], "pvt_v2_b0", {"embed_dim": 64}),  # the arch --set picks
    ("daformer.yaml", ["model.backbone=pvt_v2_b1"], "pvt_v2_b1", {"embed_dim": 64}),  # --set wins
])
def test_train_scale_applies_the_recipe_of_the_runs_architecture(config, sets, backbone, options, capsys):
    """`udabench train CONFIG --scale S` merges like a study trial: file < scale (with the backbone and
    options of the run's architecture) < --set."""
    import yaml

    from harness.cli import main
    from harness.scales import SCALES

    path = f"{__file__.rsplit('/tests/', 1)[0]}/studies/configs/{config}"
    args = ["train", path, "--scale", "cpu", "--print-config"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["backbone"] == backbone and cfg["model"]["options"] == options
    assert cfg["schedule"]["iterations"] == SCALES["cpu"]["overlay"]["schedule"]["iterations"]

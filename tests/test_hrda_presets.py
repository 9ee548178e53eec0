"""HRDA at the paper scales (issue 18): the architecture's data preset and recipe (`harness/scales.py`),
the per-architecture recipe of an auxiliary task (MIC's 64-pixel blocks on HRDA), the main study's HRDA
rows, and the official rows HRDA and MIC(HRDA) inherit (`harness/official.py`). The image's pseudo-label
margins themselves: tests/test_pseudo_margins.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from harness.env import offline

offline()

from harness import official  # noqa: E402
from harness.engine.resolve import load_config  # noqa: E402
from harness.scales import SCALES, scale_overlay  # noqa: E402
from harness.study.load import load_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DAFORMER = REPO / "studies" / "configs" / "daformer.yaml"


def hrda(scale: str, *overrides: str, aux: tuple[str, ...] = ()):
    return load_config(DAFORMER, ["model.arch=hrda", *overrides], extra=scale_overlay(scale, "hrda", aux=aux))


# --------------------------------------------------------------------------------------------------
# the presets

def test_paper_hrda_is_the_official_high_resolution_recipe():
    cfg = hrda("paper")
    d, m, o = cfg.data, cfg.method, cfg.model.options
    # configs/_base_/datasets/uda_gtaHR_to_cityscapesHR_1024x1024.py
    assert (d.source.name, d.source.resize, d.target.resize, d.val.resize) == \
        ("gta5", (2560, 1440), (2048, 1024), (2048, 1024))
    assert d.source.keep_ratio and d.target.keep_ratio and d.val.keep_ratio
    from harness.data.dataset import SegDataset
    from harness.data.layouts import Listing

    def resized(size, keep):  # mmcv's rescale: GTA 1914x1052 -> 2560x1407, Cityscapes stays 2048x1024
        return SegDataset(Listing("x", REPO, [], lambda p: None), resize=size, keep_ratio=True).resized(*keep)

    assert resized(d.source.resize, (1914, 1052)) == (2560, 1407)
    assert resized(d.target.resize, (2048, 1024)) == resized(d.val.resize, (2048, 1024)) == (2048, 1024)
    assert (d.crop, d.batch_size, d.source_cat_max_ratio) == ((1024, 1024), 2, 0.75)
    assert d.rare_class_sampling and (d.rcs_temperature, d.rcs_min_pixels, d.rcs_min_crop_ratio) == (0.01, 3000, 2.0)
    # configs/hrda/gtaHR2csHR_hrda.py: the model and its test_cfg
    assert (cfg.model.arch, cfg.model.backbone, cfg.model.pretrained) == ("hrda", "pvt_v2_b5", "pretrained/mit_b5.pth")
    assert o["base"] == "daformer" and o["base_options"] == {"embed_dim": 256, "fusion_dilations": [1, 6, 12, 18],
                                                             "dropout": 0.1}
    assert (o["context_scale"], o["detail_crop"], o["crop_coord_divisible"], o["detail_loss_weight"]) == \
        (0.5, [512, 512], 8, 0.1)
    assert o["attention_classwise"] and o["attention_embed_dim"] == 256 and o["slide_detail"]
    assert o["encoder_options"] == {"drop_path_rate": 0.1}
    assert (cfg.eval.mode, cfg.eval.crop, cfg.eval.stride, cfg.eval.interval) == ("slide", (1024, 1024), (512, 512), 4000)
    # DAFormer's self-training (dacs_a999_fdthings) with HRDA's pseudo-label margins of the image
    # (crop_pseudo_margins) instead of DAFormer's rows of each crop
    assert (m.ema_alpha, m.fd.weight, m.teacher_bn, m.source_ce_mean, m.classmix_classes) == \
        (0.999, 0.005, "batch", "all", "batch")
    assert m.pseudo_image_margins == (30, 240, 30, 30)
    assert (m.pseudo_weight_ignore_top, m.pseudo_weight_ignore_bottom) == (0, 0)
    assert (cfg.optim.lr, cfg.optim.encoder_norm_decay_mult, cfg.schedule.iterations, cfg.schedule.warmup) == \
        (6e-5, 0.0, 40000, 1500)
    assert m.aux == {}  # no task enabled: none gets a recipe


def test_paper_synthia_hrda_reads_synthia_at_twice_daformers_size():
    cfg = hrda("paper-synthia")
    assert (cfg.data.source.name, cfg.data.source.resize, cfg.eval.protocol) == ("synthia", (2560, 1520), "16")
    assert (cfg.data.target.resize, cfg.data.crop, cfg.eval.mode) == ((2048, 1024), (1024, 1024), "slide")
    daformer = load_config(DAFORMER, extra=scale_overlay("paper-synthia", "daformer"))
    assert (daformer.data.source.resize, daformer.data.crop, daformer.eval.mode) == ((1280, 760), (512, 512), "whole")
    # the SYNTHIA preset changes HRDA's source and nothing else of the paper preset
    paper = hrda("paper").to_dict()
    paper["data"]["source"].update(name="synthia", root="datasets/synthia", resize=[2560, 1520])
    paper["eval"]["protocol"] = "16"
    assert hrda("paper-synthia").to_dict() == paper


def test_print_config_shows_the_high_resolution_values(tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)  # no weights file here: --print-config only resolves
    assert main(["train", str(DAFORMER), "--scale", "paper", "--set", "model.arch=hrda", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["source"]["resize"] == [2560, 1440] and printed["data"]["crop"] == [1024, 1024]
    assert [printed["eval"][k] for k in ("mode", "crop", "stride")] == ["slide", [1024, 1024], [512, 512]]
    assert printed["method"]["pseudo_image_margins"] == [30, 240, 30, 30] and printed["data"]["rcs_min_crop_ratio"] == 2.0
    assert list(tmp_path.iterdir()) == []


def test_small_scales_keep_hrda_small():
    for scale in ("smoke", "demo", "cpu"):
        cfg = hrda(scale)
        detail = [32, 32] if scale == "smoke" else [64, 64]
        assert cfg.model.backbone == "pvt_v2_b0" and cfg.model.options["detail_crop"] == detail, scale
        assert cfg.eval.mode == "whole" and cfg.method.pseudo_weight_ignore_top == 0, scale
        assert cfg.method.pseudo_image_margins is None, scale


@pytest.mark.parametrize("scale", ["demo", "cpu"])
def test_small_hrda_reads_twice_daformers_resolution_and_is_scored_on_its_labels(scale, tmp_path):
    """The paper's regime in miniature: HRDA's images are twice DAFormer's size, its context view
    (x0.5) DAFormer's whole input, its detail crop half the short side, and the labels scored the same."""
    from harness.data.dataset import build_dataset
    from harness.data.synthetic import SynthParams, generate

    synth_root = tmp_path / "synthetic"  # at the generated size the small scales read (256x128)
    generate(SynthParams(seed=0, width=256, height=128, splits={"target": {"val": 3}}), synth_root)

    daformer = load_config(DAFORMER, extra=scale_overlay(scale, "daformer"))
    cfg = hrda(scale)
    for part in ("source", "target", "val"):
        small, large = getattr(daformer.data, part).resize, getattr(cfg.data, part).resize
        assert tuple(large) == (2 * small[0], 2 * small[1]), part
    assert tuple(cfg.data.crop) == (2 * daformer.data.crop[0], 2 * daformer.data.crop[1])
    scale_ = cfg.model.options["context_scale"] if "context_scale" in cfg.model.options else 0.5
    assert [round(c * scale_) for c in cfg.data.crop] == list(daformer.data.crop)  # context view = DAFormer's
    assert cfg.model.options["detail_crop"] == [cfg.data.crop[0] // 2] * 2
    assert cfg.data.rcs_min_pixels == 4 * daformer.data.rcs_min_pixels
    # the same labels: HRDA's val set (256x128 images, label_size) against DAFormer's (128x64 images)
    ref = build_dataset(daformer.data.val.model_copy(update={"root": str(synth_root)}),
                        resize_label=not daformer.eval.full_resolution_labels)
    hr = build_dataset(cfg.data.val.model_copy(update={"root": str(synth_root)}),
                       resize_label=not cfg.eval.full_resolution_labels, label_size=cfg.eval.label_size)
    for i in range(3):
        a, b = ref[i], hr[i]
        assert b["image"].shape[-2:] == (2 * a["image"].shape[-2], 2 * a["image"].shape[-1])
        assert torch.equal(a["label"], b["label"]), i


# --------------------------------------------------------------------------------------------------
# an auxiliary task's recipe per architecture

def test_mic_on_hrda_gets_64_pixel_blocks_only_when_enabled():
    mic = hrda("paper", "method.aux.mim.weight=1", aux=("mim",))
    assert mic.method.aux["mim"].options == {"block": 64}
    on_daformer = load_config(DAFORMER, ["method.aux.mim.weight=1"],
                              extra=scale_overlay("paper", "daformer", aux=["mim"]))
    assert on_daformer.method.aux["mim"].options == {}  # the task's default: 32 at 512 crops
    for scale in ("paper", "paper-synthia"):
        assert "aux" not in scale_overlay(scale, "hrda")["method"]          # a scale never enables a task
        assert set(scale_overlay(scale, "hrda", aux=["mfm"])["method"].get("aux", {})) <= {"mfm"}
        assert scale_overlay(scale, "hrda", aux=["mim"])["method"]["aux"]["mim"] == {"options": {"block": 64}}
    assert "aux" in SCALES["paper"]["arch_overlay"]["hrda"]["method"]  # scale_overlay copies, never pops it


def test_the_architectures_task_recipe_goes_over_the_scales(monkeypatch):
    monkeypatch.setitem(SCALES["paper"], "aux_overlay",
                        {**SCALES["paper"]["aux_overlay"], "mim": {"options": {"block": 16, "mask_ratio": 0.5}}})
    assert scale_overlay("paper", "hrda", aux=["mim"])["method"]["aux"]["mim"] == \
        {"options": {"block": 64, "mask_ratio": 0.5}}
    assert scale_overlay("paper", "daformer", aux=["mim"])["method"]["aux"]["mim"] == \
        {"options": {"block": 16, "mask_ratio": 0.5}}
    # the run's own values (a study's axes, --set) still go over both
    cfg = hrda("paper", "method.aux.mim.options.block=128", aux=("mim",))
    assert cfg.method.aux["mim"].options["block"] == 128


# --------------------------------------------------------------------------------------------------
# the main study and the weights

def test_main_study_adds_hrda_rows_at_the_paper_scales_only():
    before = {("deeplabv2", "none"), ("deeplabv2", "mfm"), ("daformer", "none"), ("daformer", "mfm")}
    cpu = load_study(REPO / "studies" / "main.yaml", "cpu")
    assert {(t.point["arch"], t.point["aux"]) for t in cpu.trials()} == before and \
        {t.point["seed"] for t in cpu.trials()} == {0}
    for scale in ("smoke", "demo"):
        assert {t.point["arch"] for t in load_study(REPO / "studies" / "main.yaml", scale).trials()} == \
            {"deeplabv2", "daformer"}
    for scale, source in (("paper", [2560, 1440]), ("paper-synthia", [2560, 1520])):
        trials = load_study(REPO / "studies" / "main.yaml", scale).trials()
        assert len(trials) == 36
        by_arch = {}
        for t in trials:
            by_arch.setdefault(t.point["arch"], set()).add(
                (tuple(t.config.data.source.resize), tuple(t.config.data.val.resize), t.config.eval.mode))
        assert by_arch["hrda"] == {(tuple(source), (2048, 1024), "slide")}
        assert {(a, *v) for a, values in by_arch.items() if a != "hrda" for v in values} == {
            (a, (source[0] // 2, source[1] // 2), (1024, 512), "whole") for a in ("deeplabv2", "daformer")}
        mic = [t.config for t in trials if t.point["arch"] == "hrda" and t.point["aux"] == "mim"]
        assert len(mic) == 3 and all(c.method.aux["mim"].options == {"block": 64} for c in mic)


def test_weights_list_names_hrdas_encoder(tmp_path, capsys):
    from harness.cli import main

    assert main(["weights", "list", "--scale", "paper", "--scale", "paper-synthia", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for scale in ("paper", "paper-synthia"):
        assert re.search(rf"{scale}\s+hrda\s+pvt_v2_b5\s+pretrained/mit_b5.pth\s+MISSING", out), out


# --------------------------------------------------------------------------------------------------
# the official rows: MIC and HRDA inherit DAFormer's

def test_hosts_inherit_their_bases_rows_and_cite_the_bases_files():
    daformer = {r.path or r.what: r for r in official.rows_for(official.DAFORMER)}
    mic = {r.path or r.what: r for r in official.rows_for(official.MIC)}
    own = {r.path for r in official.RECIPE if official.MIC in r.hosts}
    assert own and all(p.startswith("method.aux.mim.") for p in own)
    assert set(mic) == set(daformer) | own and all(mic[k] is daformer[k] for k in daformer)
    assert official.origin(official.MIC, daformer["method.fd.weight"]).repo == "lhoyer/DAFormer"
    assert official.origin(official.MIC, mic["method.aux.mim.options.block"]).repo == "lhoyer/MIC"

    hrda = {r.path or r.what: r for r in official.rows_for(official.HRDA)}
    assert not set(official.HOSTS[official.HRDA].without) & set(hrda)  # DAFormer's head rows: base_options
    assert hrda["data.crop"].value == [1024, 1024] and hrda["method.fd.weight"] is daformer["method.fd.weight"]
    mic_hrda = {r.path or r.what: r for r in official.rows_for(official.MIC_HRDA, "paper-synthia")}
    assert mic_hrda["method.aux.mim.options.block"].value == 64
    assert mic_hrda["data.source.resize"].value == [2560, 1520]  # HRDA's SYNTHIA row, inherited
    assert official.origin(official.MIC_HRDA, mic_hrda["data.source.resize"]).repo == "lhoyer/HRDA"
    assert official.origin(official.MIC_HRDA, mic_hrda["method.teacher_bn"]).repo == "lhoyer/DAFormer"
    with pytest.raises(KeyError):
        official.rows_for(official.MIC, "paper-synthia")


def test_hrda_parity_names_every_difference():
    from harness.report import recipe

    for host in (official.HRDA, official.MIC_HRDA):
        rows = recipe.parity(host, "paper", small=False)
        assert not recipe.drift(rows)
        by_path = {r.path: r for r in rows}
        margins = by_path["method.pseudo_image_margins"]  # the image's margins, as the official loader
        assert margins.status == "same" and margins.udabench == [30, 240, 30, 30]
        assert by_path["method.pseudo_weight_ignore_top"].udabench == 0
        assert by_path["probe:fd_view_scale"].udabench == 0.5  # FD on the context view's features
        assert by_path["eval.mode"].status == "same" and by_path["eval.stride"].udabench == [512, 512]


def test_weights_verify_checks_a_file_against_hrdas_encoder_at_each_scale(tmp_path, capsys):
    import timm

    from harness.cli import main

    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(timm.create_model("pvt_v2_b0", pretrained=False).state_dict(), path)
    assert main(["weights", "verify", str(path), "--arch", "hrda", "--scale", "smoke"]) == 0  # small: pvt_v2_b0
    assert "OK for timm pvt_v2_b0: timm format" in capsys.readouterr().out
    assert main(["weights", "verify", str(path), "--arch", "hrda"]) == 2  # paper: MiT-B5 = pvt_v2_b5
    assert "shape mismatch" in capsys.readouterr().err


def test_label_size_is_one_choice_of_the_labels_size_and_reaches_the_trainer(smoke_config, tmp_path):
    from harness.config import ConfigError
    from harness.engine.training import Trainer

    with pytest.raises(ConfigError, match="label_size and full_resolution_labels"):
        load_config(DAFORMER, ["eval.label_size=[128,64]", "eval.full_resolution_labels=true"])
    trainer = Trainer(smoke_config(tmp_path, "eval.label_size=[32,16]"))
    item = trainer.val[0]
    assert tuple(item["label"].shape) == (16, 32) and tuple(item["image"].shape[-2:]) == (64, 128)
    m = trainer.evaluate()  # logits resized to the labels
    assert 0 <= m["target_miou"] <= 100

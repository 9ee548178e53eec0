"""The DAFormer/MIC host recipe at paper scale (issue 17): each option's mechanics on hand-made tensors,
its paper-scale value against the official one (a table naming the official file: a drift fails), and
the small scales keeping their behaviour (values, config hashes)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harness.env import offline

offline()

from conftest import tiny_segmentor  # noqa: E402

from harness import official  # noqa: E402
from harness.config import (  # noqa: E402
    FD_THING_CLASSES,
    LATER_FIELDS,
    ConfigError,
    MethodConfig,
    RunConfig,
    validate_schema,
)
from harness.data.dataset import CROP_ATTEMPTS, SegDataset, _random_crop  # noqa: E402
from harness.data.layouts import Listing, Sample  # noqa: E402
from harness.engine.evaluation import evaluate  # noqa: E402
from harness.engine.resolve import load_config  # noqa: E402
from harness.engine.training import SampleStream, build_optimizer  # noqa: E402
from harness.labels import IGNORE_INDEX  # noqa: E402
from harness.report import recipe  # noqa: E402
from harness.scales import SCALES, scale_overlay  # noqa: E402
from methods.base import StepContext  # noqa: E402
from methods.dacs import DACS, class_mix_masks, feature_distance, set_teacher_mode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "studies" / "configs"
MIT = ("daformer", "segformer")
ALL = ("deeplabv2", "daformer", "segformer", "hrda")

# --------------------------------------------------------------------------------------------------
# the official values live in harness/official.py (each with its official file); the parity table
# (harness/report/recipe.py, `udabench recipe`, reports/recipe_parity.md) puts udabench's beside them

# the run configs' own host per architecture (DAFormer's recipe on MiT, with either head)
_HOST_OF = {"deeplabv2": official.DLV2, "daformer": official.DAFORMER, "segformer": official.DAFORMER,
            "hrda": official.HRDA}
# what the architecture itself decides (its head), not the host recipe
_ARCH_ROWS = ("model.arch", "model.options.embed_dim", "model.options.fusion_dilations", "model.options.dropout")
# SYNTHIA's size at paper scale: DAFormer's 1280x760, HRDA's twice that
_SYNTHIA = {"deeplabv2": [1280, 760], "daformer": [1280, 760], "segformer": [1280, 760], "hrda": [2560, 1520]}


def official_rows(arch: str, scale: str = "paper") -> list:
    """The official rows of `arch`'s host that a run config at `scale` must match (no named difference)."""
    return [r for r in official.rows_for(_HOST_OF[arch], scale)
            if r.path and not r.differs and not r.path.startswith(("study.", *_ARCH_ROWS))]


def _config_of(arch: str) -> Path:
    return CONFIGS / ("deeplabv2.yaml" if arch == "deeplabv2" else "daformer.yaml")


def resolved(scale: str, arch: str) -> dict:
    return load_config(_config_of(arch), [f"model.arch={arch}"], extra=scale_overlay(scale, arch)).to_dict()


def at(d: dict, path: str):
    for key in path.split("."):
        d = d[key]
    return d


@pytest.mark.parametrize("arch", ALL)
def test_paper_scale_values_are_the_official_ones(arch):
    """The run configs (not only the study trials the parity table resolves) at paper scale."""
    cfg = recipe.effective(load_config(_config_of(arch), [f"model.arch={arch}"],
                                       extra=scale_overlay("paper", arch)), [])
    rows = official_rows(arch)
    drift = [f"{r.path}: {recipe.lookup(cfg, r.path)!r}, official {r.value!r} ({r.source})"
             for r in rows if recipe.status_of(r, recipe.lookup(cfg, r.path)) != "same"]
    assert len(rows) > 40 and not drift, "\n".join(drift)


@pytest.mark.parametrize("arch", ALL)
def test_paper_synthia_is_paper_with_the_synthia_source(arch):
    paper, synthia = resolved("paper", arch), resolved("paper-synthia", arch)
    host = official.DAFORMER if arch != "hrda" else official.HRDA
    rows = [r for r in official.RECIPE if r.scale == "paper-synthia" and host in r.hosts]
    drift = [f"{r.path}: {at(synthia, r.path)!r}, official {r.value!r} ({r.source})"
             for r in rows if at(synthia, r.path) != r.value]
    assert len(rows) == 3 and not drift, "\n".join(drift)
    paper["data"]["source"].update(name="synthia", root="datasets/synthia", resize=_SYNTHIA[arch])
    paper["eval"]["protocol"] = "16"
    assert synthia == paper  # nothing else differs: the recipe and the weights are the paper scale's
    for name, overlay in SCALES["paper-synthia"]["arch_overlay"].items():  # one table, HRDA's source apart
        assert (overlay is SCALES["paper"]["arch_overlay"][name]) == (name != "hrda")


@pytest.mark.parametrize("scale", ["smoke", "demo", "cpu"])
@pytest.mark.parametrize("arch", ALL)
def test_small_scales_keep_the_behaviour_before_the_recipe(scale, arch):
    cfg, default = resolved(scale, arch), RunConfig().to_dict()
    for path in LATER_FIELDS:
        if arch == "hrda" and scale != "smoke" and path == ("eval", "label_size"):
            # HRDA's demo/cpu regime (twice DAFormer's resolution, scored on its labels) came with HRDA:
            # there were no results before it to keep
            assert at(cfg, "eval.label_size") == [128, 64]
            continue
        if arch == "hrda" and path == ("method", "teacher_bn"):
            # HRDA's small-scale teacher on batch statistics, as the official (README "HRDA at cpu"): its
            # running statistics average the context view's and the detail crops'
            assert at(cfg, "method.teacher_bn") == "batch"
            continue
        assert at(cfg, ".".join(path)) == at(default, ".".join(path)), path
    assert "encoder_options" not in cfg["model"]["options"]


# `contrastive` at paper scale is SePiCo's ProtoCL (BIT-DA/SePiCo; experiments.py id 6), merged only into a
# run that enables the task: (option of method.aux.contrastive.options, official value, official file), read
# from the one table of official values (harness/official.py)
OFFICIAL_CONTRASTIVE = [(r.path.rsplit(".", 1)[1], r.value, r.source) for r in official.rows_for(official.SEPICO)
                        if r.path and r.path.startswith("method.aux.contrastive.options.")]


@pytest.mark.parametrize("scale", ["paper", "paper-synthia"])
@pytest.mark.parametrize("arch", ALL)
def test_paper_contrastive_is_sepico_protocl(scale, arch):
    from methods.contrastive import Contrastive

    config = CONFIGS / ("deeplabv2.yaml" if arch == "deeplabv2" else "daformer.yaml")
    cfg = load_config(config, [f"model.arch={arch}", "method.aux.contrastive.weight=1"],
                      extra=scale_overlay(scale, arch, aux=["contrastive"]))
    aux = cfg.method.aux["contrastive"]
    opts = Contrastive.Options.model_validate(aux.options)
    drift = [f"{key}: {getattr(opts, key)!r}, official {value!r} ({source})"
             for key, value, source in OFFICIAL_CONTRASTIVE if getattr(opts, key) != value]
    assert not drift, "\n".join(drift)
    # loss weight 1 (experiments.py contrastive_weight = 1.0); the engine's start stays 0, so the
    # prototypes are updated from iteration 0 (sepico.py); head lr x10 (experiments.py pmult, 'head')
    assert (aux.weight, aux.start_iter, aux.lr_mult) == (1.0, 0, 10.0)


@pytest.mark.parametrize("scale", ["smoke", "demo", "cpu", "paper"])
def test_a_scale_never_enables_an_auxiliary_task(scale):
    for arch in ALL:
        assert "aux" not in scale_overlay(scale, arch).get("method", {})
        assert "contrastive" not in scale_overlay(scale, arch, aux=["mfm"]).get("method", {}).get("aux", {})
    small = load_config(CONFIGS / "daformer.yaml", ["method.aux.contrastive.weight=1"],
                        extra=scale_overlay(scale, "daformer", aux=["contrastive"]))
    assert (small.method.aux["contrastive"].options == {}) == (scale != "paper")  # small: the task's defaults


def test_config_hashes_of_the_small_scales_did_not_change():
    """The hashes udabench gave these configs before the recipe options existed (MLflow runs, reports
    and `study resume` find runs by them). A new field with a neutral default belongs in LATER_FIELDS."""
    # daformer_mfm.yaml itself changed when the scales took over the Rebuilder preset (it no longer says
    # `preset: base`; was 1658a5f18a3f5aa6 / d7c426afd73544af): these pin its new text
    pinned = {("daformer_mfm.yaml", "daformer", "cpu"): "4b5f4a420dca5d3d",
              ("daformer_mfm.yaml", "daformer", "smoke"): "2cb9edd742a566be",
              ("deeplabv2.yaml", "deeplabv2", "cpu"): "5ce7a006744d3c21",
              ("deeplabv2.yaml", "deeplabv2", "smoke"): "4cfdb55f24006c6d"}
    for (config, arch, scale), h in pinned.items():
        assert load_config(CONFIGS / config, extra=scale_overlay(scale, arch)).hash() == h, (config, scale)
    paper = load_config(CONFIGS / "daformer.yaml", extra=scale_overlay("paper", "daformer"))
    assert paper.hash() != load_config(CONFIGS / "daformer.yaml", extra=scale_overlay("paper", "daformer"),
                                       overrides=["method.teacher_bn=running"]).hash()


# --------------------------------------------------------------------------------------------------
# the recipe parity table (harness/report/recipe.py): the published hosts as their study trials resolve


@pytest.fixture
def fresh_parity(monkeypatch):
    """The parity module with an empty study cache (a monkeypatched scale must be re-resolved)."""
    monkeypatch.setattr(recipe, "_STUDIES", {})
    return recipe


@pytest.mark.parametrize(("host", "scale"), recipe.host_scales())
def test_published_host_at_paper_scale_has_the_official_recipe(host, scale):
    rows = recipe.parity(host, scale, small=False)
    assert len(rows) > 40
    drift = [f"{r.what} ({r.path}): udabench {recipe.fmt(r.udabench)}, official {recipe.fmt(r.official)} "
             f"({r.source})" for r in recipe.drift(rows)]
    assert not drift, f"{host} at --scale {scale} drifted from the official recipe (name the difference " \
                      "in harness/official.py if it is meant):\n" + "\n".join(drift)


@pytest.mark.parametrize(("host", "scale"), recipe.host_scales())
def test_every_recipe_field_of_a_host_has_an_official_row(host, scale):
    missing = recipe.uncovered(host, scale)
    assert not missing, f"fields of {host}'s resolved config without a row in harness/official.py RECIPE " \
                        f"(or a reason in NOT_RECIPE): {missing}"


def test_a_drifted_paper_default_fails_and_a_named_difference_does_not(fresh_parity, monkeypatch):
    before = {r.path: r for r in fresh_parity.parity("daformer", small=False)}
    assert before["method.teacher_bn"].status == "same" and before["amp"].status == "differs"
    # a paper-scale default drifts: the table shows the new value, and the row is a DRIFT
    monkeypatch.setitem(SCALES["paper"]["overlay"]["method"], "teacher_bn", "running")
    monkeypatch.setitem(SCALES["paper"]["arch_overlay"]["daformer"]["method"]["fd"], "weight", 0.01)
    after = {r.path: r for r in fresh_parity.parity("daformer", small=False)}
    assert {r.path for r in fresh_parity.drift(list(after.values()))} == {"method.teacher_bn", "method.fd.weight"}
    assert (after["method.teacher_bn"].udabench, after["method.fd.weight"].udabench) == ("running", 0.01)
    assert "| `running` | `batch` | DRIFT |" in fresh_parity.markdown([("daformer", "paper")])
    # the named difference stops being one when its reason is removed
    amp = next(i for i, r in enumerate(official.RECIPE) if r.path == "amp" and "daformer" in r.hosts)
    rows = list(official.RECIPE)
    rows[amp] = dataclasses.replace(rows[amp], differs="")
    monkeypatch.setattr(official, "RECIPE", rows)
    assert {r.path for r in fresh_parity.drift(fresh_parity.parity("daformer", small=False))} >= {"amp"}


def test_the_small_scale_column_is_the_same_trial_at_cpu(fresh_parity, monkeypatch):
    monkeypatch.setitem(SCALES["cpu"]["overlay"]["method"], "ema_alpha", 0.98)
    rows = {r.path: r for r in fresh_parity.parity("dacs-deeplabv2")}
    assert rows["method.ema_alpha"].small["cpu"] == 0.98 and rows["method.ema_alpha"].udabench == 0.99
    assert rows["method.ema_alpha"].small["smoke"] == 0.99  # smoke has no short-schedule overlay
    assert rows["schedule.iterations"].small == {"cpu": 2000, "demo": 300, "smoke": 4}
    assert recipe._small_cell(rows["method.ema_alpha"]) == "0.98; demo 0.99, smoke 0.99"


def test_probes_read_the_code():
    head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(4, 2, 1))
    assert recipe._layers(head) == "conv-BN-ReLU-conv"
    assert recipe.lookup({"method": {"aux": {}}}, "probe:contrastive_head") is recipe.UNSET
    assert recipe.lookup({"a": {"b": 1}}, "a.c") is recipe.UNSET and recipe.lookup({}, None) is recipe.NO_OPTION


def test_the_committed_parity_report_is_what_the_code_generates():
    committed = (REPO / "reports" / "recipe_parity.md").read_text()
    assert committed == recipe.markdown(recipe.host_scales()) + "\n", \
        "reports/recipe_parity.md is stale: regenerate it with `udabench recipe > reports/recipe_parity.md`"


def test_recipe_command_prints_the_table_and_refuses_unknown_hosts(capsys):
    from harness.cli import main

    assert main(["recipe", "--host", "mic-daformer"]) == 0
    out = capsys.readouterr().out
    assert out == recipe.markdown([("mic-daformer", "paper")]) + "\n" and "## MIC(DAFormer)" in out
    assert main(["recipe", "--host", "daformer", "--scale", "paper-synthia", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["scale"] for r in table} == {"paper-synthia"} and len(table) == len(recipe.parity("daformer", "paper-synthia"))
    assert next(r for r in table if r["option"] == "eval.protocol")["udabench"] == "16"
    assert main(["recipe", "--host", "daformr"]) == 2
    err = capsys.readouterr().err
    assert "unknown host (did you mean 'daformer'?)" in err and "valid: " + ", ".join(official.HOSTS) in err
    assert main(["recipe", "--host", "mic-daformer", "--scale", "paper-synthia"]) == 2
    assert "mic-daformer: paper" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# 1. ImageNet feature distance

def _cells_label(classes: list[list[int]], cell: int = 4) -> torch.Tensor:
    """A 1 x (rows*cell) x (cols*cell) label, each cell filled with its class."""
    return torch.tensor(classes).repeat_interleave(cell, 0).repeat_interleave(cell, 1)[None]


def test_feature_distance_mask_and_value_on_known_features():
    # 2x2 cells of 4x4 pixels: car (thing), road (stuff), person at 10/16 purity (< 0.75: ignored), ignore
    label = _cells_label([[13, 0], [11, IGNORE_INDEX]])
    label[0, 4:7, 0:2] = 0    # cell (1, 0): 10 of 16 pixels person, 6 road -> purity 0.625
    student = torch.zeros(1, 2, 2, 2)
    student[0, :, 0, 0] = torch.tensor([3.0, 4.0])   # car cell: distance 5
    student[0, :, 0, 1] = torch.tensor([6.0, 8.0])   # road: not a thing class
    student[0, :, 1, 0] = torch.tensor([30.0, 40.0])  # impure person cell
    frozen = torch.zeros_like(student)
    d = feature_distance(student, frozen, label, FD_THING_CLASSES, 0.75, 19)
    assert d.item() == pytest.approx(5.0)
    # at a 0.6 purity the person cell counts too: mean of 5 and 50
    assert feature_distance(student, frozen, label, FD_THING_CLASSES, 0.6, 19).item() == pytest.approx(27.5)
    # classes None: every cell, whatever its label (DAFormer's fdist_classes=None)
    assert feature_distance(student, frozen, label, None, 0.75, 19).item() == pytest.approx((5 + 10 + 50) / 4)


def test_feature_distance_without_thing_cells_is_zero_with_zero_gradient():
    label = _cells_label([[0, 1], [2, IGNORE_INDEX]])
    student = torch.randn(1, 3, 2, 2, requires_grad=True)
    d = feature_distance(student, torch.zeros(1, 3, 2, 2), label, FD_THING_CLASSES, 0.75, 19)
    d.backward()
    assert d.item() == 0.0 and torch.count_nonzero(student.grad) == 0


def _ctx(model, h: int = 16, w: int = 16, seed: int = 0) -> StepContext:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (2, h, w), generator=g)
    label[:, :4] = 13  # a car band: thing cells for FD
    return StepContext(iteration=0, source_image=torch.randn(2, 3, h, w, generator=g), source_label=label,
                       target_image=torch.randn(2, 3, h, w, generator=g), student=model,
                       mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1) / 255)


def test_fd_host_uses_a_frozen_copy_of_the_initial_model_right_after_the_source_ce():
    torch.manual_seed(0)
    model = tiny_segmentor()
    initial = copy.deepcopy(model.state_dict())
    host = DACS(MethodConfig(fd={"weight": 0.005, "min_ratio": 0.5}), model)
    calls = []

    def backward(name, loss, retain_graph=False):
        calls.append((name, float(loss.detach()), retain_graph))
        loss.backward(retain_graph=retain_graph)

    with torch.no_grad():  # the student moves away from its initial weights
        for p in model.parameters():
            p.add_(0.1)
    ctx = _ctx(model)
    host.step(ctx, backward)
    assert [c[0] for c in calls] == ["sup", "fd", "uda"]
    assert calls[0][2] is True and calls[1][1] > 0
    assert not host.imnet.training and all(not p.requires_grad for p in host.imnet.parameters())
    assert all(torch.equal(v, initial[k]) for k, v in host.imnet.state_dict().items())
    host.train()
    assert not host.imnet.training
    # its value: weight x the masked distance between the student's last stage (train mode, as in the
    # step) and the frozen model's (eval mode: the initial running statistics)
    with torch.no_grad():
        f_s, f_0 = model.encode(ctx.source_image)[-1], host.imnet.encode(ctx.source_image)[-1]
    expected = 0.005 * feature_distance(f_s, f_0, ctx.source_label, FD_THING_CLASSES, 0.5, 19)
    assert calls[1][1] == pytest.approx(float(expected), rel=1e-5)


def test_fd_off_keeps_no_frozen_copy():
    host = DACS(MethodConfig(), tiny_segmentor())
    assert not hasattr(host, "imnet")
    assert not any(k.startswith("imnet") for k in host.state_dict())


# --------------------------------------------------------------------------------------------------
# 2. pseudo-label crop

def test_pseudo_weight_rows_zeroed():
    host = DACS(MethodConfig(pseudo_weight_ignore_top=15, pseudo_weight_ignore_bottom=120), tiny_segmentor())
    w = host.crop_pseudo_weight(torch.full((2, 512, 8), 0.7))
    assert torch.all(w[:, :15] == 0) and torch.all(w[:, 512 - 120:] == 0)
    assert torch.all(w[:, 15:512 - 120] == 0.7)
    off = DACS(MethodConfig(), tiny_segmentor())
    assert torch.all(off.crop_pseudo_weight(torch.full((1, 64, 4), 0.7)) == 0.7)


def test_pseudo_weight_crop_reaches_the_tasks_and_the_stat_keeps_the_confident_share():
    torch.manual_seed(0)
    host = DACS(MethodConfig(pseudo_weight_ignore_top=3, pseudo_weight_ignore_bottom=5, pseudo_threshold=0.0),
                tiny_segmentor())
    ctx = _ctx(host.model)
    host.step(ctx, lambda name, loss, retain_graph=False: loss.backward(retain_graph=retain_graph))
    assert ctx.stats["pseudo_weight"] == 1.0  # threshold 0: every pixel confident
    assert torch.all(ctx.pseudo_weight[:, :3] == 0) and torch.all(ctx.pseudo_weight[:, -5:] == 0)
    assert torch.all(ctx.pseudo_weight[:, 3:-5] == 1)


def test_a_pseudo_label_crop_covering_the_crop_is_refused():
    with pytest.raises(ConfigError, match="would ignore every row"):
        validate_schema({"data": {"crop": [64, 64]},
                         "method": {"pseudo_weight_ignore_top": 15, "pseudo_weight_ignore_bottom": 120}})


# --------------------------------------------------------------------------------------------------
# 3. rare-class sampling's re-crop and the source crops' cat_max_ratio

def _dataset(tmp_path: Path, labels: list[np.ndarray], **kwargs) -> SegDataset:
    samples = []
    for i, lab in enumerate(labels):
        img, lbl = tmp_path / f"{i}.png", tmp_path / f"{i}_label.png"
        Image.fromarray(np.full((*lab.shape, 3), 100, np.uint8)).save(img)
        Image.fromarray(lab.astype(np.uint8)).save(lbl)
        samples.append(Sample(img, lbl, str(i)))

    def read(path):
        return np.asarray(Image.open(path))

    return SegDataset(Listing("hand", tmp_path, samples, read), **kwargs)


def _rare_label() -> np.ndarray:
    lab = np.zeros((32, 256), np.uint8)   # road everywhere
    lab[:, 230:250] = 16                  # a 20-pixel-wide train at the right edge: 640 pixels
    return lab


def test_rcs_recrop_reaches_the_threshold(tmp_path):
    ds = _dataset(tmp_path, [_rare_label()], crop=(32, 32), seed=0)
    n = 200
    once = []
    for epoch in range(n):
        ds.set_epoch(epoch)
        once.append(int((ds[0]["label"] == 16).sum()) > 300)
    recrop = []
    for k in range(n):
        ds.set_epoch(0)
        recrop.append(int((ds.item(0, rare_class=16, min_class_pixels=300, sample=k)["label"] == 16).sum()) > 300)
    # one crop of 225 positions holds > 300 train pixels at 11 of them (5%); eleven draws at ~40%
    assert np.mean(once) < 0.15 and np.mean(recrop) > 0.3 and np.mean(recrop) > 3 * np.mean(once)
    ds.set_epoch(3)
    a = ds.item(0, rare_class=16, min_class_pixels=300, sample=7)
    b = ds.item(0, rare_class=16, min_class_pixels=300, sample=7)
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])


def test_rcs_recrop_stops_at_the_first_crop_over_the_threshold(tmp_path):
    lab = np.full((32, 64), 16, np.uint8)  # every crop holds 1024 train pixels
    ds = _dataset(tmp_path, [lab], crop=(32, 32), seed=5, flip=0.5)
    # the draws of one crop, then the flip: exactly the stream of a plain item
    assert torch.equal(ds.item(0, rare_class=16, min_class_pixels=1000)["image"], ds[0]["image"])


def test_plain_crops_are_drawn_as_before(tmp_path):
    """Without cat_max_ratio or a rare class, the crop and flip come from the same two-plus-one draws of the
    (seed, epoch, index) generator as before the recipe options (the small scales' data is unchanged)."""
    lab = np.arange(48 * 80, dtype=np.int64).reshape(48, 80) % 19
    ds = _dataset(tmp_path, [lab.astype(np.uint8)], crop=(16, 24), seed=3, flip=0.5)
    for epoch in range(6):
        ds.set_epoch(epoch)
        rng = np.random.default_rng([3, epoch, 0])
        y, x = int(rng.integers(0, 48 - 16 + 1)), int(rng.integers(0, 80 - 24 + 1))
        expect = lab[y:y + 16, x:x + 24]
        if rng.random() < 0.5:
            expect = expect[:, ::-1]
        assert np.array_equal(ds[0]["label"].numpy(), expect)


def test_sample_stream_passes_the_sampled_class_to_the_recrop(tmp_path):
    labs = [np.zeros((32, 256), np.uint8), _rare_label()]
    ds = _dataset(tmp_path, labs, crop=(32, 32), seed=0)
    stream = SampleStream(ds, seed=0, rcs=(0.01, 100), min_crop_ratio=0.5)
    assert stream.min_crop_pixels == 50
    hits = []
    for k in range(60):
        index, _, c = stream.draw(k)
        item = stream[k]
        if c == 16:
            assert index == 1
            hits.append(int((item["label"] == 16).sum()) > 50)
    # > 50 train pixels: 25 of 225 crop positions (11%) for one draw, 1 - (200/225)^11 = 73% within eleven
    assert len(hits) > 10 and np.mean(hits) > 0.5
    assert stream.index(5) == SampleStream(ds, 0, (0.01, 100)).index(5)  # the same image draws


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    lab = np.zeros((32, 256), np.uint8)
    lab[:16, 192:] = 1
    lab[16:, 192:] = 2  # classes 1 and 2 only in the last 64 columns
    image = np.zeros((32, 256, 3), np.uint8)
    ok = []
    for s in range(100):
        _, crop = _random_crop(image, lab, (32, 32), np.random.default_rng(s), cat_max_ratio=0.75)
        counts = np.bincount(crop.ravel(), minlength=3)
        ok.append(counts.max() / counts.sum() < 0.75)
    plain = [np.bincount(_random_crop(image, lab, (32, 32), np.random.default_rng(s))[1].ravel()).max() < 768
             for s in range(100)]
    # one draw passes at 56 of 225 positions (25%), one of eleven at 1 - 0.75^11 = 96%
    assert np.mean(ok) > 0.85 and np.mean(plain) < 0.45
    # a crop that can never pass: the last of 1 + CROP_ATTEMPTS draws is kept
    flat = np.zeros((32, 256), np.uint8)
    rng = np.random.default_rng(1)
    _random_crop(image, flat, (32, 32), rng, cat_max_ratio=0.75)
    ref = np.random.default_rng(1)
    for _ in range(1 + CROP_ATTEMPTS):
        ref.integers(0, 32 - 32 + 1), ref.integers(0, 256 - 32 + 1)
    assert rng.integers(0, 2**31) == ref.integers(0, 2**31)


# --------------------------------------------------------------------------------------------------
# 4. the teacher's BatchNorm and the EMA

def test_teacher_bn_uses_the_batch_statistics_with_dropout_off():
    torch.manual_seed(0)
    model = tiny_segmentor()
    with torch.no_grad():
        model.encoder[1].running_mean.fill_(5.0)  # running statistics far from the batch's
    host = DACS(MethodConfig(teacher_bn="batch"), model)
    bn, drop = host.teacher.encoder[1], host.teacher.head[0]
    assert bn.training and not drop.training
    x = torch.randn(4, 3, 8, 8) * 3 + 2
    feats = host.teacher.encoder[0](x)
    mean, var = feats.mean((0, 2, 3)), feats.var((0, 2, 3), unbiased=False)
    expected = (feats - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    expected = torch.relu(expected * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    with torch.no_grad():
        got = host.teacher.encode(x)[-1]
        again = host.teacher(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(again, host.teacher(x).detach())  # no dropout: deterministic
    host.eval(), host.train()
    assert bn.training and not drop.training  # the mode survives host.train()/eval()
    running = DACS(MethodConfig(), copy.deepcopy(model))
    assert not running.teacher.encoder[1].training and not running.teacher.head[0].training


def test_teacher_bn_mode_on_a_real_model_turns_drop_path_off():
    from timm.layers import DropPath

    from harness.models import create_segmentor

    model = create_segmentor("daformer", backbone="pvt_v2_b0", embed_dim=16,
                             encoder_options={"drop_path_rate": 0.1})
    teacher = copy.deepcopy(model)
    set_teacher_mode(teacher, "batch")
    drops = [m for m in teacher.modules() if isinstance(m, DropPath)]
    bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    assert drops and bns and not any(m.training for m in drops) and all(m.training for m in bns)
    assert not any(m.training for m in teacher.modules() if isinstance(m, nn.Dropout | nn.Dropout2d))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x), teacher(x))


def test_ema_averages_parameters_only_with_batch_statistics():
    torch.manual_seed(0)
    for mode in ("batch", "running"):
        model = tiny_segmentor()
        host = DACS(MethodConfig(teacher_bn=mode, ema_alpha=0.9), model)
        t_buffers = {k: v.clone() for k, v in host.teacher.named_buffers()}
        t_params = {k: v.clone() for k, v in host.teacher.named_parameters()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            model.encoder[1].running_mean.fill_(3.0)
            model.encoder[1].num_batches_tracked.fill_(7)
        host.after_optimizer_step(100)
        for k, v in host.teacher.named_parameters():
            assert torch.allclose(v, t_params[k] + 0.1), (mode, k)  # alpha 0.9: a tenth of the step
        bn = dict(host.teacher.named_buffers())
        if mode == "batch":
            assert all(torch.equal(bn[k], t_buffers[k]) for k in t_buffers)
        else:
            assert torch.allclose(bn["encoder.1.running_mean"], torch.full((8,), 0.3))
            assert int(bn["encoder.1.num_batches_tracked"]) == 7


# --------------------------------------------------------------------------------------------------
# 5. drop-path, norm weight decay, source CE, ClassMix classes

def test_paper_drop_path_is_linear_to_0_1():
    from timm.layers import DropPath

    from harness.models import create_segmentor

    options = scale_overlay("paper", "daformer")["model"]["options"]
    model = create_segmentor("daformer", backbone="pvt_v2_b0", embed_dim=16, **options)
    rates = [m.drop_prob for m in model.encoder.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1) and rates == sorted(rates)


def test_no_weight_decay_on_encoder_norm_parameters():
    from harness.models import create_segmentor

    model = create_segmentor("daformer", backbone="pvt_v2_b0", embed_dim=16)
    cfg = RunConfig(optim={"encoder_norm_decay_mult": 0.0})
    opt = build_optimizer(cfg, model, nn.ModuleDict())
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["encoder", "encoder/norm", "decoder"]
    names = {id(p): n for n, p in model.named_parameters()}
    norm = {names[id(p)] for p in groups["encoder/norm"]["params"]}
    # exactly what DAFormer's custom_keys `norm` matches in the MiT (= PVTv2) encoder's names
    assert norm == {n for n, _ in model.named_parameters() if n.startswith("encoder.") and "norm" in n}
    assert groups["encoder/norm"]["weight_decay"] == 0.0 and groups["encoder/norm"]["lr"] == cfg.optim.lr
    assert groups["encoder"]["weight_decay"] == groups["decoder"]["weight_decay"] == 0.01
    # the head's BatchNorm still decays (mmcv names it `bn`): it stays in the decoder group
    head_bn = {id(p) for m in model.head.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert head_bn and head_bn <= {id(p) for p in groups["decoder"]["params"]}
    # default: the groups as before
    assert [g["name"] for g in build_optimizer(RunConfig(), model, nn.ModuleDict()).param_groups] == \
        ["encoder", "decoder"]


def test_source_ce_mean_over_all_pixels():
    torch.manual_seed(0)
    model = tiny_segmentor()
    ctx = _ctx(model)
    ctx.source_label[:, :, :4] = IGNORE_INDEX  # a quarter ignored
    model.eval()  # no dropout: the same logits for both
    losses = {}
    for mean in ("valid", "all"):
        host = DACS(MethodConfig(source_ce_mean=mean), model)
        host.source_loss(ctx, lambda name, loss, retain_graph=False, key=mean: losses.setdefault(key, loss.item()))
    valid = (ctx.source_label != IGNORE_INDEX).float().mean().item()
    assert valid == 0.75
    assert losses["all"] == pytest.approx(losses["valid"] * valid, rel=1e-5)


def test_classmix_batch_classes_as_daformer():
    a = torch.zeros(4, 4, dtype=torch.long)
    a[2:] = 1                                  # image 0: classes 0, 1
    b = torch.full((4, 4), 2, dtype=torch.long)
    b[:, 2] = 3
    b[:, 3] = IGNORE_INDEX                     # image 1: classes 2, 3 and ignore
    labels = torch.stack([a, b])
    empty0 = ignore_pasted = 0
    for seed in range(40):
        torch.manual_seed(seed)
        m = class_mix_masks(labels, "batch")
        torch.manual_seed(seed)
        mi = class_mix_masks(labels, "image")
        # batch: 3 of the 5 classes {0, 1, 2, 3, 255} for each image
        empty0 += int(not m[0].any())
        ignore_pasted += int(m[1][labels[1] == IGNORE_INDEX].any())
        assert mi[0].any() and mi[1].any() and not mi[1][labels[1] == IGNORE_INDEX].any()
    assert empty0 > 0 and ignore_pasted > 0
    full = torch.arange(5).repeat_interleave(4).view(4, 5)
    full[full == 4] = IGNORE_INDEX
    m = class_mix_masks(torch.stack([full, full]), "batch")
    assert all(len(torch.unique(full[mask])) == 3 for mask in m)  # ceil(5 / 2) classes, ignore counted


# --------------------------------------------------------------------------------------------------
# 6. evaluation against full-resolution labels

class _HalfModel(nn.Module):
    """Logits at a quarter of the input size: class 0 on the left half, class 1 on the right."""

    def forward(self, x):
        b, _, h, w = x.shape
        logits = torch.zeros(b, 19, h // 4, w // 4)
        logits[:, 0, :, : w // 8] = 1
        logits[:, 1, :, w // 8:] = 1
        return logits


def test_evaluation_against_a_label_larger_than_the_logits(tmp_path):
    lab = np.zeros((64, 128), np.uint8)
    lab[:, 64:] = 1
    lab[:, 63] = 1  # one column a full-resolution label has and a 4x downscale loses
    ds = _dataset(tmp_path, [lab], resize=(32, 16), resize_label=False)
    item = ds[0]
    assert tuple(item["image"].shape) == (3, 16, 32) and tuple(item["label"].shape) == (64, 128)
    res = evaluate(_HalfModel(), [item], "cpu")
    cm_ones = 64 * 64 + 64  # class 1 pixels, the extra column predicted 0
    assert res["iou"][1] == pytest.approx(64 * 64 / cm_ones)
    (tmp_path / "resized").mkdir()
    resized = _dataset(tmp_path / "resized", [lab], resize=(32, 16))  # the small scales' way: label resized
    assert tuple(resized[0]["label"].shape) == (16, 32)


def test_trainer_builds_the_val_set_with_full_resolution_labels(synth_root, tmp_path):
    from harness.engine.training import Trainer

    data = [f"data.{part}.root={synth_root}" for part in ("source", "target", "val")]
    cfg = load_config(None, [*data, f"output={tmp_path}/run", "threads=1", "data.val.resize=[64,32]",
                             "eval.full_resolution_labels=true"], extra=scale_overlay("smoke", "deeplabv2"))
    val = Trainer(cfg, progress=False).val
    assert tuple(val[0]["image"].shape[-2:]) == (32, 64) and tuple(val[0]["label"].shape) == (64, 128)


# --------------------------------------------------------------------------------------------------
# 7. resizing keeping the aspect ratio

def test_keep_ratio_resize_is_mmcvs_rescale(tmp_path):
    ds = SegDataset(Listing("x", tmp_path, [], lambda p: None), resize=(1280, 720), keep_ratio=True)
    assert ds.resized(1914, 1052) == (1280, 704)   # GTA
    assert ds.resized(2048, 1024) == (1280, 640)
    assert SegDataset(Listing("x", tmp_path, [], lambda p: None), resize=(1024, 512),
                      keep_ratio=True).resized(2048, 1024) == (1024, 512)  # Cityscapes
    assert SegDataset(Listing("x", tmp_path, [], lambda p: None), resize=(1280, 760),
                      keep_ratio=True).resized(1280, 760) == (1280, 760)  # SYNTHIA
    stretch = SegDataset(Listing("x", tmp_path, [], lambda p: None), resize=(1280, 720))
    assert stretch.resized(1914, 1052) == (1280, 720)
    lab = np.zeros((53, 96), np.uint8)             # 96x53 -> scale min(64/96, 36/53) = 0.667 -> 64x35
    ds = _dataset(tmp_path, [lab], resize=(64, 36), keep_ratio=True)
    assert tuple(ds[0]["image"].shape) == (3, 35, 64) and tuple(ds[0]["label"].shape) == (35, 64)
    assert ds.size(0) == (64, 35)


# --------------------------------------------------------------------------------------------------
# the whole recipe through the engine (at smoke size): it trains, and a resumed run ends identically

# the paper recipe with values that fit 64x64 smoke crops of the 128x64 test set
RECIPE_AT_SMOKE = [
    "method.fd.weight=0.005", "method.fd.min_ratio=0.5", "method.teacher_bn=batch",
    "method.source_ce_mean=all", "method.classmix_classes=batch", "method.pseudo_weight_ignore_top=4",
    "method.pseudo_weight_ignore_bottom=8", "optim.encoder_norm_decay_mult=0",
    "model.options.encoder_options.drop_path_rate=0.1", "data.rare_class_sampling=true",
    "data.rcs_min_pixels=50", "data.rcs_min_crop_ratio=0.5", "data.source_cat_max_ratio=0.75",
    "data.source.keep_ratio=true", "data.val.resize=[64,32]", "eval.full_resolution_labels=true",
]


def test_the_recipe_trains_and_resumes_to_the_same_metrics(synth_root, tmp_path):
    from harness.engine import checkpoint as ckpt
    from harness.engine.training import train

    def cfg(out):
        data = [f"data.{part}.root={synth_root}" for part in ("source", "target", "val")]
        return load_config(None, [*data, f"output={out}", "threads=1", "model.arch=daformer",
                                  "method.ema_alpha=0.999", *RECIPE_AT_SMOKE],
                           extra=scale_overlay("smoke", "daformer"))

    full = train(cfg(tmp_path / "full"), progress=False)
    assert full["loss/fd"] >= 0 and full["loss/sup"] > 0 and "loss/uda" in full

    class Killed(Exception):
        pass

    def kill(iteration, metrics, folder):
        raise Killed

    with pytest.raises(Killed):
        train(cfg(tmp_path / "part"), on_eval=kill, progress=False)
    state = ckpt.load(tmp_path / "part" / "checkpoint")
    assert any(k.startswith("imnet.") for k in state["host"])
    resumed = train(cfg(tmp_path / "part"), resume=tmp_path / "part" / "checkpoint", progress=False)
    def comparable(metrics):
        return {k: repr(v) for k, v in metrics.items() if k not in ("step_time", "throughput", "peak_mem_mb")}

    assert comparable(resumed) == comparable(full)

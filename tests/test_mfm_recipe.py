"""MFM's recipe options (issue 17): the image it sees (`image: target | mixed`), the pixels its loss
covers (`loss_on: all | masked`), and the reuse of the `dacs` host's encoder pass of the mixed image
(same gradients as encoding it again, one encoder pass fewer, no graph kept after the step)."""

from __future__ import annotations

import math
import weakref
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from conftest import reuse_and_fresh, small_segmentor
from torch.utils.data import default_collate

from harness.config import ConfigError
from harness.engine.resolve import load_config
from harness.engine.training import Trainer, train
from harness.labels import IGNORE_INDEX
from methods import AUX_TASKS, HOSTS
from methods._common import weighted_ce
from methods.base import StepContext

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64
TINY = {"mask_unit": 16, "preset": "tiny"}  # 64x64 crops -> a 4x4 token grid


def make_model(seed: int = 0):
    """DAFormer/pvt_v2_b0 in eval mode: its head's Dropout2d off, so a loss computed twice is the same."""
    return small_segmentor("daformer", seed).eval()


def make_ctx(student, seed: int = 0) -> StepContext:
    """A context with distinct clean-target and mixed inputs (mixed label / weight unlike the pseudo ones)."""
    g = torch.Generator().manual_seed(seed)

    def image():
        return F.interpolate(torch.randn(2, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear",
                             align_corners=False)

    def label():
        return torch.randint(0, 5, (2, 4, 4), generator=g).repeat_interleave(16, 1).repeat_interleave(16, 2)

    ctx = StepContext(iteration=1, source_image=image(), source_label=label(), target_image=image(),
                      student=student, pseudo_label=label(), pseudo_weight=torch.full((2, SIZE, SIZE), 0.8))
    ctx.extras.update(mixed_image=image(), mixed_label=label(),
                      mixed_weight=torch.rand(2, SIZE, SIZE, generator=g) + 0.5)
    return ctx


def fixed_keep(task, seed: int = 1) -> torch.Tensor:
    """Make the task's Rebuilder use one fixed token keep mask (B x 1 x 4 x 4, both values present)."""
    keep = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) > 0.4).float()
    keep[:, :, 0, 0], keep[:, :, 0, 1] = 1.0, 0.0
    task.rebuilder.draw_keep = lambda deepest: keep
    return keep


# --------------------------------------------------------------------------------------------------
# options

@pytest.mark.parametrize("override, message", [
    ("method.aux.mfm.options.image=mix", r"method\.aux\.mfm\.options: image: .*'target' or 'mixed'"),
    ("method.aux.mfm.options.loss_on=visible", r"method\.aux\.mfm\.options: loss_on: .*'all' or 'masked'"),
    ("method.aux.mfm.options.loss_ob=masked", r"method\.aux\.mfm\.options: loss_ob: unknown key "
                                              r"\(did you mean 'loss_on'\?\)"),
])
def test_unknown_option_values_name_the_field_and_the_valid_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_color_aug_with_the_mixed_image_is_refused():
    with pytest.raises(ConfigError, match=r"method\.aux\.mfm\.options.*color_aug applies to image 'target' "
                                          r"only"):
        load_config(None, ["method.aux.mfm.options.image=mixed", "method.aux.mfm.options.color_aug=true"])


def test_defaults_are_the_clean_target_and_every_pixel_and_only_mixed_declares_reuse():
    model = make_model()
    default = AUX_TASKS.get("mfm")(TINY, model, 19)
    mixed = AUX_TASKS.get("mfm")({**TINY, "image": "mixed"}, model, 19)
    assert (default.opts.image, default.opts.loss_on) == ("target", "all")
    assert default.reuses == frozenset() and mixed.reuses == {"mixed_features"}
    assert type(mixed).reuses == frozenset()  # the instance declares it, not every MFM


# --------------------------------------------------------------------------------------------------
# the image MFM sees

def test_mixed_image_uses_the_hosts_mixed_image_label_and_weight():
    model = make_model()
    task = AUX_TASKS.get("mfm")({**TINY, "image": "mixed"}, model, 19)
    keep = fixed_keep(task)
    ctx = make_ctx(model)
    loss = task(ctx)["ce"]
    rebuilt, _ = task.rebuilder(model.encode(ctx.extras["mixed_image"]), keep)
    expected = weighted_ce(model.decode(rebuilt), ctx.extras["mixed_label"], ctx.extras["mixed_weight"])
    torch.testing.assert_close(loss, expected)
    # the clean target's pseudo-labels play no part; the mixed label does
    ctx.pseudo_label = torch.zeros_like(ctx.pseudo_label)
    ctx.target_image = torch.zeros_like(ctx.target_image)
    torch.testing.assert_close(task(ctx)["ce"], loss)
    ctx.extras["mixed_label"] = (ctx.extras["mixed_label"] + 1) % 5
    assert abs(float(task(ctx)["ce"].detach() - loss.detach())) > 1e-4
    # image: target on the same context sees the clean target and the pseudo-labels instead
    target = AUX_TASKS.get("mfm")(TINY, model, 19)
    target.rebuilder.load_state_dict(task.rebuilder.state_dict())
    fixed_keep(target)
    rebuilt, _ = task.rebuilder(model.encode(ctx.target_image), keep)
    torch.testing.assert_close(target(ctx)["ce"], weighted_ce(model.decode(rebuilt), ctx.pseudo_label,
                                                              ctx.pseudo_weight))


def test_mixed_image_without_a_mixing_host_is_a_clear_error():
    model = make_model()
    ctx = make_ctx(model)
    del ctx.extras["mixed_label"]
    task = AUX_TASKS.get("mfm")({**TINY, "image": "mixed"}, model, 19)
    with pytest.raises(RuntimeError, match=r"'mfm' needs the host's mixed image.*'mixed_label' missing at "
                                           r"iteration 1.*'dacs'"):
        task(ctx)


def test_the_dacs_host_leaves_the_mixed_image_label_and_weight_it_trained_on(smoke_config, tmp_path):
    cfg = mfm_config(smoke_config, tmp_path, None)
    model = make_model()
    host = HOSTS.get("dacs")(cfg.method, model)
    ctx = make_ctx(model)
    ctx.extras.clear()
    ctx.mean = torch.tensor((123.675, 116.28, 103.53)).view(1, 3, 1, 1)
    ctx.std = torch.tensor((58.395, 57.12, 57.375)).view(1, 3, 1, 1)
    logged = {}
    host.step(ctx, lambda name, loss, retain_graph=False: logged.update({name: float(loss.detach())}))
    assert {"mixed_image", "mixed_label", "mixed_weight"} <= set(ctx.extras)
    assert not {"mixed_features", "source_features"} & set(ctx.extras)  # nobody asked for them
    image, label, weight = (ctx.extras[k] for k in ("mixed_image", "mixed_label", "mixed_weight"))
    # the host's own loss, recomputed from what it left: the augmented mixed image, label and weight
    with torch.no_grad():
        ce = F.cross_entropy(model(image), label, ignore_index=IGNORE_INDEX, reduction="none")
    assert float((ce * weight).mean()) == pytest.approx(logged["uda"], rel=1e-5)
    from_source = label == ctx.source_label
    assert torch.all(from_source | (label == ctx.pseudo_label))  # ClassMix: every pixel from one side
    assert not torch.equal(image, ctx.target_image)  # strongly augmented (jitter p 0.8, blur p 0.5)


# --------------------------------------------------------------------------------------------------
# the pixels the loss covers

def test_masked_coverage_ignores_visible_pixels_and_all_does_not():
    model = make_model()
    tasks = {}
    for loss_on in ("all", "masked"):
        tasks[loss_on] = AUX_TASKS.get("mfm")({**TINY, "loss_on": loss_on}, model, 19)
        tasks[loss_on].rebuilder.load_state_dict(tasks["all"].rebuilder.state_dict())
        keep = fixed_keep(tasks[loss_on])
    visible = F.interpolate(keep, size=(SIZE, SIZE), mode="nearest")[:, 0].bool()
    ctx = make_ctx(model)
    with torch.no_grad():
        base = {k: float(t(ctx)["ce"]) for k, t in tasks.items()}
        # the two differ exactly by the visible pixels' terms (same mean over all pixels)
        rebuilt, _ = tasks["all"].rebuilder(model.encode(ctx.target_image), keep)
        logits = F.interpolate(model.decode(rebuilt), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        ce = F.cross_entropy(logits, ctx.pseudo_label, reduction="none") * ctx.pseudo_weight
        assert base["all"] - base["masked"] == pytest.approx(float((ce * visible).mean()), rel=1e-4)
        assert base["masked"] == pytest.approx(float((ce * ~visible).mean()), rel=1e-4)
        # new labels on the visible pixels: `masked` does not move, `all` does
        label = ctx.pseudo_label
        ctx.pseudo_label = torch.where(visible, (label + 3) % 19, label)
        assert float(tasks["masked"](ctx)["ce"]) == pytest.approx(base["masked"], rel=1e-6)
        assert abs(float(tasks["all"](ctx)["ce"]) - base["all"]) > 1e-4  # float noise is ~1e-7
        # new labels on the masked pixels: `masked` moves
        ctx.pseudo_label = torch.where(visible, label, (label + 3) % 19)
        assert abs(float(tasks["masked"](ctx)["ce"]) - base["masked"]) > 1e-4


# --------------------------------------------------------------------------------------------------
# reuse of the host's encoder pass, through the real engine

def mfm_config(smoke_config, out, mfm: dict | None, arch: str = "daformer", more: tuple[str, ...] = ()):
    """`dacs` (+ MFM with `mfm` options, tiny) at the smoke scale; every pseudo-label at weight 1."""
    aux = {"mfm": {"options": {**TINY, **mfm}}} if mfm is not None else None
    return smoke_config(out, "method.pseudo_threshold=0", *more, arch=arch, aux=aux)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("arch", ["daformer", "deeplabv2"])
def test_reused_features_give_the_gradients_of_a_fresh_encode_with_one_pass_less(smoke_config, tmp_path, arch):
    cfg = mfm_config(smoke_config, tmp_path, {"image": "mixed"}, arch)
    trainer = Trainer(cfg, progress=False)
    b = cfg.data.batch_size
    src = default_collate([trainer.source_stream[i] for i in range(b)])
    tgt = default_collate([trainer.target_stream[i] for i in range(b)])
    mfm = trainer.aux["mfm"]
    seen, reused = {}, {}
    forward = mfm.forward

    def spy(ctx):
        seen.update(ctx=ctx, reuse=ctx.reuse, feats=[weakref.ref(f) for f in ctx.extras.get("mixed_features", [])])
        return forward(ctx)

    def after(variant):
        reused[variant] = seen["reuse"]
        if variant == "reuse":
            # the features MFM used were the host's, and nothing holds them (or their graph) after the step
            assert seen["feats"] and "mixed_features" not in seen["ctx"].extras
            assert all(ref() is None for ref in seen["feats"])

    mfm.forward = spy
    ran, grads = reuse_and_fresh(trainer, src, tgt, after=after)
    assert (ran["reuse"][0], reused["reuse"]) == (2, {"mixed_features"})   # source + mixed image
    assert (ran["fresh"][0], reused["fresh"]) == (3, frozenset())          # source + mixed image + MFM's own encode
    assert ran["reuse"][1] == pytest.approx(ran["fresh"][1], rel=1e-6)  # the same losses
    assert grads["reuse"].keys() == grads["fresh"].keys()
    assert any(n.startswith("encoder.") for n in grads["reuse"]) and any(n.startswith("aux.mfm.") for n in grads["reuse"])
    # the reused pass back-propagates host + MFM as one sum (one traversal of the shared encoder graph),
    # the fresh one in two backward calls: equal up to float32 summation order, so compared per tensor
    # relative to its norm (a detached or missing path differs by far more: ~1)
    worst = max(float((g - grads["fresh"][n]).norm() / grads["fresh"][n].norm().clamp_min(1e-12))
                for n, g in grads["reuse"].items())
    assert worst < 1e-4, worst


def test_a_task_before_its_start_iteration_keeps_no_host_pass(smoke_config, tmp_path):
    cfg = mfm_config(smoke_config, tmp_path, {"image": "mixed"}, more=("method.aux.mfm.start_iter=3",))
    trainer = Trainer(cfg, progress=False)
    reuse = []
    step = trainer.host.step
    trainer.host.step = lambda ctx, backward: (reuse.append(ctx.reuse), step(ctx, backward))[1]
    b = cfg.data.batch_size
    for k in range(4):
        src = default_collate([trainer.source_stream[k * b + i] for i in range(b)])
        tgt = default_collate([trainer.target_stream[k * b + i] for i in range(b)])
        trainer.step(src, tgt, defaultdict(float))
        trainer.iteration += 1
    assert reuse == [frozenset()] * 3 + [{"mixed_features"}]


@pytest.mark.parametrize("image, loss_on", [("target", "all"), ("target", "masked"), ("mixed", "all"),
                                            ("mixed", "masked")])
def test_dacs_with_mfm_trains_with_each_option(smoke_config, tmp_path, image, loss_on):
    cfg = mfm_config(smoke_config, tmp_path, {"image": image, "loss_on": loss_on})
    metrics = train(cfg, progress=False)
    assert math.isfinite(metrics["loss/mfm/ce"]) and metrics["loss/mfm/ce"] > 0
    assert math.isfinite(metrics["loss/uda"]) and math.isfinite(metrics["target_miou"])


# --------------------------------------------------------------------------------------------------
# the scales' MFM recipe (harness/scales.py): the mixed image everywhere, a Rebuilder as wide as the
# encoder's deepest stage (small scales: `small` on pvt_v2_b0; paper: the released `base` on MiT-B5)


@pytest.mark.parametrize("scale", ["smoke", "demo", "cpu", "paper", "paper-synthia"])
def test_each_scale_feeds_mfm_the_mixed_image_and_a_rebuilder_as_wide_as_the_encoder(scale):
    from pathlib import Path

    from harness.models import create_segmentor
    from harness.scales import scale_overlay
    from methods.mfm import MFM

    config = Path(__file__).resolve().parents[1] / "studies" / "configs" / "daformer_mfm.yaml"
    cfg = load_config(config, ["model.pretrained=null"], extra=scale_overlay(scale, "daformer", aux=["mfm"]))
    opts = MFM.Options.model_validate(cfg.method.aux["mfm"].options)
    assert opts.image == "mixed"
    depth, width, heads = opts.resolved()
    small = scale not in ("paper", "paper-synthia")
    assert (depth, width, heads) == ((2, 256, 8) if small else (2, 512, 16))
    if small:  # the small model's deepest stage is as wide as its Rebuilder (MiT-B5's is 512: base)
        model = create_segmentor(cfg.model.arch, backbone=cfg.model.backbone, **cfg.model.options)
        assert model.feature_channels[-1] == width
    # an explicit choice wins over the scale's (the rebuilder study's axis, a user's --set)
    chosen = load_config(config, ["model.pretrained=null", "method.aux.mfm.options.preset=base",
                                  "method.aux.mfm.options.image=target"],
                         extra=scale_overlay(scale, "daformer", aux=["mfm"]))
    assert chosen.method.aux["mfm"].options["preset"] == "base"
    assert chosen.method.aux["mfm"].options["image"] == "target"
    # without the task enabled, the scale adds nothing
    assert "aux" not in scale_overlay(scale, "daformer").get("method", {})

"""Auxiliary tasks (contrastive, mim, mfm) on the real segmentors: zero inference cost, where the
gradients go, masking statistics, MFM's identity at mask ratio 0, that each task can learn, and the
clear errors for bad options."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from harness.env import offline

offline()

from conftest import SMALL_MODELS, small_segmentor  # noqa: E402

from harness.config import ConfigError  # noqa: E402
from harness.engine.resolve import load_config  # noqa: E402
from harness.labels import IGNORE_INDEX  # noqa: E402
from methods import AUX_TASKS  # noqa: E402
from methods._common import downscale_label  # noqa: E402
from methods.base import StepContext  # noqa: E402
from methods.mfm import Rebuilder  # noqa: E402
from methods.mim import hog_cells  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = list(SMALL_MODELS)
# (task name, options): every task and variant; MFM with a 16-pixel mask unit so that 64x64 crops
# give a 4x4 token grid (and the daformer stride-32 stage exercises a down-sampling projector).
TASKS = {
    "contrastive": ("contrastive", {"proj_dim": 64}),
    "mim-mic": ("mim", {"variant": "mic", "block": 16}),
    "mim-recon-pixel": ("mim", {"variant": "recon", "target": "pixel", "block": 16}),
    "mim-recon-hog": ("mim", {"variant": "recon", "target": "hog", "block": 16}),
    "mfm": ("mfm", {"mask_unit": 16, "preset": "tiny"}),
}
SIZE = 64


def blocky_label(batch: int, seed: int, block: int = 16) -> torch.Tensor:
    """B x SIZE x SIZE labels, one random class per block (so area-majority labels survive)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 5, (batch, SIZE // block, SIZE // block), generator=g)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def smooth_images(batch: int, g: torch.Generator) -> torch.Tensor:
    """Image-like (spatially correlated) normalised images: bilinearly upsampled 8x8 noise."""
    return F.interpolate(torch.randn(batch, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear",
                         align_corners=False)


def make_ctx(student, teacher=None, seed: int = 0, augment=None, weight: float = 0.8) -> StepContext:
    g = torch.Generator().manual_seed(seed)
    src, tgt = smooth_images(2, g), smooth_images(2, g)
    pseudo = blocky_label(2, seed + 1)
    return StepContext(
        iteration=1, source_image=src, source_label=blocky_label(2, seed), target_image=tgt,
        student=student, teacher=teacher if teacher is not None else copy.deepcopy(student).eval(),
        pseudo_label=pseudo, pseudo_weight=torch.full(pseudo.shape, weight), augment=augment)


def forward_flops(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


# --------------------------------------------------------------------------------------------------
# registration and configuration

def test_tasks_are_registered_and_configurable_by_name():
    assert {"contrastive", "mim", "mfm"} <= set(AUX_TASKS.names())
    cfg = load_config(None, ["method.aux.mfm.options.mask_ratio=0.5", "method.aux.mfm.weight=0.3",
                             "method.aux.mim.options.variant=recon", "method.aux.mim.options.target=hog"])
    assert cfg.method.aux["mfm"].options == {"mask_ratio": 0.5} and cfg.method.aux["mfm"].weight == 0.3


@pytest.mark.parametrize("override, message", [
    ("method.aux.mfm.options.mask_ratoi=0.5", r"method\.aux\.mfm\.options: mask_ratoi: unknown key "
                                               r"\(did you mean 'mask_ratio'\?\)"),
    ("method.aux.mfm.options.mask_ratio=1.5", r"method\.aux\.mfm\.options: mask_ratio: .*less than 1"),
    ("method.aux.mfm.options.preset=huge", r"method\.aux\.mfm\.options: preset: .*'tiny', 'small' or "
                                           r"'base'"),
    ("method.aux.mfm.options.width=100", r"width 100 must be divisible by heads 16"),
    ("method.aux.mim.options.variant=mae", r"method\.aux\.mim\.options: variant: .*'mic' or 'recon'"),
    ("method.aux.contrastiv.weight=1", r"method\.aux\.contrastiv: unknown auxiliary task 'contrastiv' "
                                       r"\(did you mean 'contrastive'\?\)"),
])
def test_bad_task_options_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("task", ["contrastive", "mim", "mfm"])
def test_tasks_needing_pseudo_labels_refuse_source_only(task):
    with pytest.raises(ConfigError, match=f"method.aux.{task}: needs the teacher's pseudo-labels.*"
                                          "'source_only'.*'dacs'"):
        load_config(None, ["method.host=source_only", f"method.aux.{task}.weight=1"])


def test_missing_pseudo_labels_at_run_time_is_a_clear_error():
    model = small_segmentor("daformer")
    ctx = make_ctx(model)
    ctx.pseudo_label = None
    task = AUX_TASKS.get("mfm")({"mask_unit": 16, "preset": "tiny"}, model, 19)
    with pytest.raises(RuntimeError, match="'mfm' needs the teacher's pseudo-labels.*iteration 1"):
        task(ctx)


def test_bad_geometry_is_a_clear_error():
    model = small_segmentor("daformer")
    with pytest.raises(ValueError, match=r"mask_unit 24 must be a power-of-two multiple or divisor.*"
                                         r"\[4, 8, 16, 32\]"):
        AUX_TASKS.get("mfm")({"mask_unit": 24}, model, 19)
    with pytest.raises(ValueError, match=r"in_index \[7\].*4 stage"):
        AUX_TASKS.get("contrastive")({"in_index": [7]}, model, 19)
    recon = AUX_TASKS.get("mim")({"variant": "recon", "block": 24}, model, 19)
    with pytest.raises(ValueError, match="image size 64x64 must be a multiple of block 24"):
        recon(make_ctx(model))


# --------------------------------------------------------------------------------------------------
# guarantees

@pytest.mark.parametrize("task_id", TASKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_zero_inference_cost(arch, task_id):
    """The trained student keeps the host's exact state-dict keys, parameter count and forward FLOPs;
    the task's parts live only in the task object."""
    host = small_segmentor(arch)
    student = small_segmentor(arch)
    name, opts = TASKS[task_id]
    task = AUX_TASKS.get(name)(opts, student, 19)
    ctx = make_ctx(student)
    losses = task(ctx)
    sum(losses.values()).backward()
    task.after_optimizer_step(ctx)

    assert list(student.state_dict()) == list(host.state_dict())
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in host.parameters())
    x = torch.randn(1, 3, SIZE, SIZE)
    flops = forward_flops(student.eval(), x)
    assert flops > 0 and flops == forward_flops(host.eval(), x)
    student_params = {id(p) for p in student.parameters()}
    assert not any(id(p) in student_params for p in task.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())
    if name != "mim" or opts["variant"] == "recon":  # MIC has no parameters of its own
        assert sum(p.numel() for p in task.parameters()) > 0


def _grads(params) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def _some_nonzero(params) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


@pytest.mark.parametrize("task_id", TASKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_the_right_parts_and_never_the_teacher(arch, task_id):
    student = small_segmentor(arch)
    teacher = copy.deepcopy(student).eval()  # left trainable on purpose: a leak would show as grads
    name, opts = TASKS[task_id]
    task = AUX_TASKS.get(name)(opts, student, 19)
    losses = task(make_ctx(student, teacher))
    sum(losses.values()).backward()

    groups = student.param_groups()
    assert all(g is None for g in _grads(teacher.parameters())), "gradient reached the EMA teacher"
    assert _some_nonzero(groups["encoder"]), "no gradient in the student's encoder"
    if task_id in ("mfm", "mim-mic"):
        assert _some_nonzero(groups["decoder"]), "no gradient in the student's decoder"
    else:  # contrastive and reconstruction use their own heads, not the segmentation decoder
        assert all(g is None for g in _grads(groups["decoder"]))
    if task_id == "mfm":
        reb = task.rebuilder
        for part in (reb.embed, reb.blocks, reb.norm, reb.projectors):
            assert _some_nonzero(part.parameters()), f"no gradient in the Rebuilder's {type(part).__name__}"
        assert reb.mask_token.grad is not None and bool(reb.mask_token.grad.abs().sum() > 0)
    if task_id == "contrastive":
        assert _some_nonzero(task.head.parameters())
        assert all(g is None for g in _grads(task.head_ema.parameters()))
        assert not task.proto_mean.requires_grad
    if task_id.startswith("mim-recon"):
        assert _some_nonzero(task.decoder.parameters())


@pytest.mark.parametrize("ratio", [0.4, 0.7])
def test_realised_mask_ratio_matches(ratio):
    # MFM: per-token Bernoulli keep masks, fresh per draw and per sample.
    reb = Rebuilder([32], [32], mask_unit=32, depth=1, width=32, heads=4, mask_ratio=ratio)
    deepest = torch.zeros(4, 32, 16, 16)
    draws = torch.stack([reb.draw_keep(deepest) for _ in range(100)])  # 102,400 tokens
    assert draws.shape == (100, 4, 1, 16, 16)
    assert abs(1 - draws.mean().item() - ratio) < 0.01
    assert not torch.equal(draws[0, 0], draws[0, 1]) and not torch.equal(draws[0], draws[1])
    # MIC: block masks at pixel level, masked pixels exactly 0 in normalised space.
    model = small_segmentor("daformer")
    mic = AUX_TASKS.get("mim")({"block": 8, "mask_ratio": ratio}, model, 19)
    images = torch.randn(4, 3, 64, 64) + 3.0  # no pixel is 0 by chance
    masked_frac = []
    for _ in range(50):  # 12,800 blocks
        masked, keep = mic.mask_image(images)
        assert torch.equal(masked[keep.expand_as(masked) == 0], torch.zeros_like(masked)[keep.expand_as(
            masked) == 0])
        assert torch.equal(masked[keep.expand_as(masked) == 1], images[keep.expand_as(images) == 1])
        blocks = keep[:, :, ::8, ::8]
        assert torch.equal(keep, blocks.repeat_interleave(8, 2).repeat_interleave(8, 3))  # whole blocks
        masked_frac.append(1 - keep.mean().item())
    assert abs(sum(masked_frac) / len(masked_frac) - ratio) < 0.02


@pytest.mark.parametrize("arch", ARCHS)
def test_mfm_merge_keeps_visible_features_and_replaces_masked_ones(arch):
    model = small_segmentor(arch)
    task = AUX_TASKS.get("mfm")({"mask_unit": 16, "mask_ratio": 0.5, "preset": "tiny"}, model, 19)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.encode(x)
        rebuilt, keep = task.rebuilder(feats)
    assert keep.shape == (2, 1, 4, 4) and 0 < keep.mean() < 1
    for f, r in zip(feats, rebuilt):
        assert r.shape == f.shape
        k = F.interpolate(keep, size=f.shape[-2:], mode="nearest").expand_as(f).bool()
        assert torch.equal(r[k], f[k])                     # visible: the encoder's features, exactly
        assert not torch.allclose(r[~k], f[~k])            # masked: the Rebuilder's prediction


@pytest.mark.parametrize("arch", ARCHS)
def test_mfm_mask_ratio_zero_rebuilds_the_encoder_features(arch):
    model = small_segmentor(arch).eval()
    task = AUX_TASKS.get("mfm")({"mask_unit": 16, "mask_ratio": 0.0}, model, 19)
    ctx = make_ctx(model)
    with torch.no_grad():
        feats = model.encode(ctx.target_image)
        rebuilt, keep = task.rebuilder(feats)
        assert bool(keep.all())
        assert all(torch.equal(f, r) for f, r in zip(feats, rebuilt))
        # so the MFM loss is then the host's weighted CE of the plain student on the target
        loss = task(ctx)["ce"]
        ce = F.cross_entropy(model(ctx.target_image), ctx.pseudo_label, reduction="none")
        assert torch.allclose(loss, (ce * ctx.pseudo_weight).mean(), atol=1e-6)


def test_mfm_presets_and_the_paper_rebuilder_sizes():
    def n(m):
        return sum(p.numel() for p in m.parameters())

    # The released Rebuilders (methods.md section 1): about 14.5 M (MiT-B5) and 10.2 M (ResNet-101).
    assert abs(n(Rebuilder([64, 128, 320, 512], [4, 8, 16, 32])) / 1e6 - 14.5) < 0.1
    assert abs(n(Rebuilder([2048], [8])) / 1e6 - 10.2) < 0.1
    model = small_segmentor("daformer")
    sizes = {p: n(AUX_TASKS.get("mfm")({"preset": p}, model, 19)) for p in ("tiny", "small", "base")}
    assert sizes["tiny"] < sizes["small"] < sizes["base"]
    base = AUX_TASKS.get("mfm")({"preset": "base"}, model, 19).rebuilder
    assert len(base.blocks) == 2 and base.width == 512 and base.blocks[0].attn.num_heads == 16
    custom = AUX_TASKS.get("mfm")({"preset": "base", "depth": 3, "heads": 8}, model, 19).rebuilder
    assert len(custom.blocks) == 3 and custom.width == 512 and custom.blocks[0].attn.num_heads == 8
    assert not any("pos" in k for k in custom.state_dict())  # fixed sin-cos, not learned or stored


def test_color_aug_option_uses_the_hosts_augmentation():
    model = small_segmentor("daformer")
    calls = []

    def augment(x):
        calls.append(x.shape)
        return x * 0.5

    for name, opts, expected in [("mfm", {"mask_unit": 16, "preset": "tiny"}, 0),
                                 ("mfm", {"mask_unit": 16, "preset": "tiny", "color_aug": True}, 1),
                                 ("mim", {"block": 16}, 1),
                                 ("mim", {"block": 16, "color_aug": False}, 0),
                                 ("contrastive", {"proj_dim": 16}, 1)]:
        calls.clear()
        AUX_TASKS.get(name)(opts, model, 19)(make_ctx(model, augment=augment))
        assert len(calls) == expected, (name, opts)


# --------------------------------------------------------------------------------------------------
# each task can learn

LEARN = {
    "contrastive": ("contrastive", {"proj_dim": 64, "temperature": 0.1}),
    "mim-mic": TASKS["mim-mic"],
    "mim-recon-pixel": TASKS["mim-recon-pixel"],
    "mim-recon-hog": TASKS["mim-recon-hog"],
    "mfm": ("mfm", {"mask_unit": 16, "preset": "tiny"}),
}


def descend(task, ctx: StepContext, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    """`steps` optimiser steps on the task's summed losses of the one context `ctx` (iterations 0, 1, ...);
    the loss before each step."""
    history = []
    for it in range(steps):
        ctx.iteration = it
        opt.zero_grad()
        loss = sum(task(ctx).values())
        loss.backward()
        opt.step()
        task.after_optimizer_step(ctx)
        history.append(loss.item())
    return history


@pytest.mark.parametrize("task_id", LEARN)
def test_each_task_alone_drives_its_loss_down_on_a_fixed_batch(task_id):
    student = small_segmentor("daformer")
    name, opts = LEARN[task_id]
    task = AUX_TASKS.get(name)(opts, student, 19)
    ctx = make_ctx(student)  # the teacher is a frozen copy of the initial student
    params = list(student.parameters()) + [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    student.train()
    torch.manual_seed(0)
    history = descend(task, ctx, opt, 40)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, f"{task_id}: loss {first:.4f} -> {last:.4f}"


def test_contrastive_with_seipcos_temperature_still_descends():
    """With SePiCo's temperature (100, logits divided by it) the loss sits near log(C) and moves
    little, but it must still move down."""
    student = small_segmentor("daformer")
    task = AUX_TASKS.get("contrastive")({"proj_dim": 64}, student, 19)
    ctx = make_ctx(student)
    opt = torch.optim.AdamW(list(student.parameters()) + list(task.head.parameters()), lr=1e-3)
    history = descend(task, ctx, opt, 15)
    assert history[-1] < history[0]


# --------------------------------------------------------------------------------------------------
# building blocks

def test_downscale_label_area_majority_with_purity():
    y = torch.tensor([[[1, 1, 2, 2],
                       [1, 3, 3, 3],
                       [4, 4, IGNORE_INDEX, IGNORE_INDEX],
                       [4, IGNORE_INDEX, IGNORE_INDEX, 0]]])
    out = downscale_label(y, (2, 2), num_classes=19, min_purity=0.75)
    # 3/4 ones -> 1; 2/4 twos, 2/4 threes -> ignore (impure); 3/4 fours -> 4; 3/4 ignore -> ignore
    assert out.tolist() == [[[1, IGNORE_INDEX], [4, IGNORE_INDEX]]]
    loose = downscale_label(y, (2, 2), 19, min_purity=0.5)
    assert loose[0, 0, 1] in (2, 3) and loose[0, 1, 1] == IGNORE_INDEX  # a tie passes 0.5; ignore stays


def test_prototypes_are_the_count_weighted_running_mean():
    model = small_segmentor("daformer")
    task = AUX_TASKS.get("contrastive")({"proj_dim": 4}, model, 19)
    a = torch.randn(1, 4, 2, 2)
    b = torch.randn(1, 4, 1, 3)
    ya = torch.tensor([[[0, 0], [5, IGNORE_INDEX]]])
    yb = torch.tensor([[[0, 5, 5]]])
    task.update_prototypes(a, ya)
    task.update_prototypes(b, yb)
    fa, fb = a[0].flatten(1).t(), b[0].flatten(1).t()
    assert torch.allclose(task.proto_mean[0], torch.stack([fa[0], fa[1], fb[0]]).mean(0), atol=1e-6)
    assert torch.allclose(task.proto_mean[5], torch.stack([fa[2], fb[1], fb[2]]).mean(0), atol=1e-6)
    assert task.proto_count[0] == 3 and task.proto_count[5] == 3 and task.proto_count.sum() == 6
    assert task.proto_mean[1].abs().sum() == 0


def test_contrastive_ignores_target_pixels_of_weight_zero():
    model = small_segmentor("daformer")
    task = AUX_TASKS.get("contrastive")({"proj_dim": 16, "source": False}, model, 19)
    assert task(make_ctx(model, weight=0.5))["target"] > 0
    zero = task(make_ctx(model, weight=0.0))["target"]
    assert zero.item() == 0.0
    zero.backward()
    assert not _some_nonzero(model.parameters())


def test_hog_bins_follow_edge_orientation():
    vertical = torch.zeros(1, 3, 16, 16)
    vertical[..., 8:] = 1.0         # gradient along x: orientation 0 -> bin 0
    horizontal = vertical.transpose(2, 3).contiguous()  # gradient along y: orientation pi/2 -> bin 4 of 9
    hv = hog_cells(vertical, bins=9, cell=8).reshape(1, 3, 9, 2, 2).sum((0, 1, 3, 4))
    hh = hog_cells(horizontal, bins=9, cell=8).reshape(1, 3, 9, 2, 2).sum((0, 1, 3, 4))
    assert hv.argmax() == 0 and hv[0] == hv.sum() > 0
    assert hh.argmax() == 4 and hh[4] == hh.sum() > 0
    assert hog_cells(torch.ones(1, 3, 16, 16)).abs().sum() == 0  # flat image: no gradients


def test_random_keep_never_masks_a_whole_sample():
    """On the small grids of CPU-scale images a Bernoulli mask often masks everything; one cell stays."""
    from methods._common import random_keep

    torch.manual_seed(0)
    keep = random_keep(512, 2, 4, 0.95, "cpu")
    assert keep.flatten(1).sum(1).min() >= 1
    wide = random_keep(64, 16, 16, 0.5, "cpu")
    assert abs(wide.mean().item() - 0.5) < 0.03  # still Bernoulli where a full mask is improbable


def test_mim_recon_on_cpu_scale_images_keeps_gradients_finite():
    """64x128 images in 32-pixel blocks (8 per image) at a high mask ratio: before the fix, fully masked
    (all-zero) images made the PVTv2 encoder's gradients NaN."""
    from methods import AUX_TASKS
    from methods.base import StepContext

    model = small_segmentor("daformer")
    task = AUX_TASKS.get("mim")({"variant": "recon", "target": "pixel", "mask_ratio": 0.95,
                                 "color_aug": False}, model, 19)
    images = torch.randn(2, 3, 64, 128)
    ctx = StepContext(iteration=0, source_image=images, source_label=torch.zeros(2, 64, 128, dtype=torch.long),
                      target_image=images, target_label=None, student=model,
                      mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1))
    for _ in range(3):
        model.zero_grad()
        task(ctx)["pixel"].backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert bad == []

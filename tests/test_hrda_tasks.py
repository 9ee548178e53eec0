"""HRDA with the hosts' extras and the auxiliary tasks (issue 18): the teacher's pseudo-labels from the
inference path, the feature distance on the context view of the source pass, MIC through HRDA's training
pass and loss, MFM rebuilding both views (16x16 token grids at the paper's proportions), contrastive and
mim recon on the context view, zero test-time cost, and smoke runs of the engine (determinism, resume)."""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from conftest import reuse_and_fresh
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from harness.engine import checkpoint as ckpt
from harness.engine.resolve import load_config
from harness.engine.training import Trainer, train
from harness.models import create_segmentor
from harness.models.hrda import HRDA, Views
from harness.scales import scale_overlay
from methods import AUX_TASKS, HOSTS
from methods._common import block_keep, crop, weighted_ce
from methods.base import StepContext
from methods.dacs import feature_distance
from methods.mfm import Rebuilder, visible

SMALL = dict(backbone="pvt_v2_b0", num_classes=19, base_options={"embed_dim": 16}, detail_crop=(32, 32),
             attention_embed_dim=8)
SIZE = 64
# the feature-distance runs start from random weights on purpose (FD's arithmetic, not its benefit)
pytestmark = [pytest.mark.filterwarnings("ignore:method.fd.weight is .* but model.pretrained is null"),
              pytest.mark.usefixtures("one_thread")]


def hrda(seed: int = 0, **kw) -> HRDA:
    """A tiny HRDA in eval mode (its heads' dropout off, so a loss computed twice is the same; the
    training passes `encode_views` / `views_loss` do not depend on the mode)."""
    torch.manual_seed(seed)
    return create_segmentor("hrda", **{**SMALL, **kw}).eval()


def images(n: int, g: torch.Generator, size: int = SIZE) -> torch.Tensor:
    return F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear",
                         align_corners=False)


def labels(n: int, g: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """One class of 0-4 per 16-pixel block, so area-majority labels survive down-scaling."""
    coarse = torch.randint(0, 5, (n, size // 16, size // 16), generator=g)
    return coarse.repeat_interleave(16, 1).repeat_interleave(16, 2)


def make_ctx(student, seed: int = 0, size: int = SIZE) -> StepContext:
    g = torch.Generator().manual_seed(seed)
    ctx = StepContext(iteration=1, source_image=images(2, g, size), source_label=labels(2, g, size),
                      target_image=images(2, g, size), student=student,
                      teacher=copy.deepcopy(student).requires_grad_(False), pseudo_label=labels(2, g, size),
                      pseudo_weight=torch.rand(2, size, size, generator=g) + 0.5)
    ctx.extras.update(mixed_image=images(2, g, size), mixed_label=labels(2, g, size),
                      mixed_weight=torch.rand(2, size, size, generator=g) + 0.5)
    return ctx


def method_cfg(*overrides: str):
    return load_config(None, ["model.arch=hrda", "method.host=dacs", *overrides],
                       extra=scale_overlay("smoke", "hrda")).method


def encoder_inputs(model) -> list[tuple[int, int]]:
    """Records the input size of every pass through `model.encode` (returns the live list)."""
    seen: list[tuple[int, int]] = []
    encode = model.encode
    model.encode = lambda x: (seen.append(tuple(x.shape[-2:])), encode(x))[1]
    return seen


# --------------------------------------------------------------------------------------------------
# 1. the teacher's pseudo-labels: HRDA's inference path, whatever the modules' training flags

def official_teacher_mode(teacher, bn: str) -> None:
    """The official HRDA/MIC EMA teacher's mode: the whole model in training mode (it is a submodule of
    the training UDA module), only dropout and drop-path switched off before `generate_pseudo_label`."""
    teacher.train()
    for m in teacher.modules():
        if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout) or type(m).__name__ == "DropPath":
            m.eval()


def test_teacher_pseudo_labels_come_from_the_inference_path_even_in_training_mode(monkeypatch):
    monkeypatch.setattr("methods.dacs.set_teacher_mode", official_teacher_mode)
    host = HOSTS.get("dacs")(method_cfg("method.teacher_bn=batch"), hrda().train())
    teacher = host.teacher
    calls = defaultdict(int)
    for name in ("detail_box", "detail_windows"):
        original = getattr(HRDA, name)
        monkeypatch.setattr(HRDA, name, lambda self, *a, _o=original, _n=name: (calls.__setitem__(
            _n, calls[_n] + 1), _o(self, *a))[1])
    x = images(2, torch.Generator().manual_seed(1), 64)
    x = torch.cat([x, x.flip(-1)], 3)  # 64 x 128: 3 x 7 detail windows of 32, stride 16
    rng = torch.get_rng_state()
    label, weight = host.pseudo_label(x)
    assert teacher.training  # HRDA's own flag says training, its BatchNorm runs on batch statistics
    assert calls == {"detail_windows": 1}  # the windows, never a random training crop
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.no_grad():
        want = teacher.predict(x).argmax(1)
    assert torch.equal(label, want) and weight.shape == label.shape == (2, 64, 128)
    # the check has teeth: a plain forward of this train-mode teacher would draw a detail crop
    with torch.no_grad():
        teacher(x)
    assert calls["detail_box"] == 1


# --------------------------------------------------------------------------------------------------
# 2. the feature distance: the context view's deepest stage of the source pass (HRDA feature_scale 0.5)

def test_feature_distance_on_hrda_reads_the_context_view_of_the_source_pass():
    cfg = method_cfg("method.fd.weight=0.5", "method.fd.classes=null")  # every cell (random labels are impure)
    student = hrda()
    host = HOSTS.get("dacs")(cfg, student)
    with torch.no_grad():  # move the student away from the frozen copy, so the distance is not 0
        for p in student.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = make_ctx(student, size=128)
    seen = encoder_inputs(student)
    got = {}

    def backward(name, loss, retain_graph=False):
        got[name] = (loss, retain_graph)

    torch.manual_seed(5)
    host.source_loss(ctx, backward)
    assert seen == [(64, 64), (32, 32)]  # the context view and the detail crop: FD adds no student pass
    assert got["sup"][1] is True and got["fd"][1] is False  # FD shares the source CE's graph
    torch.manual_seed(5)
    views = student.encode_views(ctx.source_image)
    with torch.no_grad():
        frozen = host.imnet.encode(F.interpolate(ctx.source_image, scale_factor=0.5, mode="bilinear",
                                                 align_corners=False))[-1]
    assert views.context[-1].shape[-2:] == frozen.shape[-2:] == (2, 2)  # 128 -> context 64 -> stride 32
    want = 0.5 * feature_distance(views.context[-1], frozen, ctx.source_label, None, 0.75, 19)
    assert float(want.detach()) > 0 and torch.allclose(got["fd"][0], want, rtol=1e-6)
    got["fd"][0].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.encoder.parameters())
    assert all(p.grad is None for p in student.head.parameters())  # FD reaches the encoder only


# --------------------------------------------------------------------------------------------------
# 3. MIC: the masked image through the student's training pass and loss

def test_mic_on_hrda_is_the_fused_and_detail_loss_of_the_masked_image():
    student = hrda()
    task = AUX_TASKS.get("mim")({"variant": "mic", "block": 16, "color_aug": False}, student, 19)
    ctx = make_ctx(student)
    seen = encoder_inputs(student)
    torch.manual_seed(3)
    loss = task(ctx)["mic"]
    assert seen == [(32, 32), (32, 32)]  # context view (64 * 0.5) and the 32x32 detail crop
    torch.manual_seed(3)
    box = student.detail_box(SIZE, SIZE)  # the pass's detail crop, drawn before the mask
    masked = ctx.target_image * block_keep(ctx.target_image, 16, 0.7, box)
    views = student.encode_views(masked, box)
    fused, detail = student.decode_views(views)
    label, weight, box = ctx.pseudo_label, ctx.pseudo_weight, views.box
    fused = F.interpolate(fused, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    detail = F.interpolate(detail, size=(32, 32), mode="bilinear", align_corners=False)
    want = 0.9 * weighted_ce(fused, label, weight) + 0.1 * weighted_ce(detail, crop(label, box), crop(weight, box))
    assert torch.equal(loss, want)


def test_mic_keeps_a_block_of_hrdas_detail_crop_visible():
    """A wholly masked detail crop is an all-zero image to the encoder (non-finite PVTv2 gradients at
    random initialisation): the mask keeps a block of the crop visible, as it keeps one of the image."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 64, 128)
    for box in [(0, 32, 0, 32), (8, 40, 72, 104), (32, 64, 96, 128)]:
        keep = block_keep(x, 16, 0.95, box)
        y1, y2, x1, x2 = box
        assert bool((keep[:, 0, y1:y2, x1:x2].flatten(1).amax(1) == 1).all()), box
        assert 0.03 < float(keep.mean()) < 0.15  # elsewhere the ratio is still drawn


def test_mic_on_a_single_view_model_is_unchanged_by_the_shared_training_pass():
    """The MIC loss through `seg_loss` is to the bit the former `weighted_ce(decode(encode(masked)))`."""
    torch.manual_seed(0)
    model = create_segmentor("daformer", backbone="pvt_v2_b0", num_classes=19, embed_dim=16).eval()
    task = AUX_TASKS.get("mim")({"variant": "mic", "block": 16, "color_aug": False}, model, 19)
    ctx = make_ctx(model)
    torch.manual_seed(3)
    loss = task(ctx)["mic"]
    torch.manual_seed(3)
    masked = ctx.target_image * block_keep(ctx.target_image, 16, 0.7)
    assert torch.equal(loss, weighted_ce(model.decode(model.encode(masked)), ctx.pseudo_label, ctx.pseudo_weight))


# --------------------------------------------------------------------------------------------------
# 4. MFM: both views rebuilt, decoded through HRDA's fusion and loss

def test_mfm_on_hrda_rebuilds_both_views_and_decodes_them_through_the_fusion_and_the_detail_loss():
    student = hrda()
    task = AUX_TASKS.get("mfm")({"mask_unit": 8, "preset": "tiny"}, student, 19)
    ctx = make_ctx(student)
    keeps = []
    forward = task.rebuilder.forward
    task.rebuilder.forward = lambda feats, keep=None: (lambda r: (keeps.append(r[1]), r)[1])(forward(feats, keep))
    torch.manual_seed(4)
    loss = task(ctx)["ce"]
    assert [tuple(k.shape[-2:]) for k in keeps] == [(4, 4), (4, 4)]  # context 32 / 8, detail crop 32 / 8
    torch.manual_seed(4)
    views = student.encode_views(ctx.target_image)
    rebuilt = views.map(lambda stages: forward(stages)[0])
    assert rebuilt.box == views.box
    label, weight = ctx.pseudo_label, ctx.pseudo_weight
    want = student.views_loss(rebuilt, lambda logits, box: weighted_ce(logits, crop(label, box), crop(weight, box)))
    assert torch.equal(loss, want)
    # the rebuilt views differ from the encoder's where masked: the loss is not the host's plain one
    plain = student.views_loss(views, lambda logits, box: weighted_ce(logits, crop(label, box), crop(weight, box)))
    assert not torch.equal(loss, plain)


def test_mfm_token_grids_of_both_views_are_16x16_at_the_papers_proportions():
    """The released Rebuilder assumes 16x16 deepest maps for the context view and the detail crop: a
    1024 crop at context scale 0.5 and a 512 detail crop, mask_unit 32 (one token per stride-32 cell).
    Here the same proportions at 1/8 (128 crop, 64 detail crop, mask_unit 4): each view's token grid is
    its side / mask_unit = 64 / 4 = 16, as 512 / 32 at the paper's sizes."""
    student = hrda(detail_crop=(64, 64))
    task = AUX_TASKS.get("mfm")({"mask_unit": 4, "preset": "tiny"}, student, 19)
    ctx = make_ctx(student, size=128)
    keeps = []
    forward = task.rebuilder.forward
    task.rebuilder.forward = lambda feats, keep=None: (lambda r: (keeps.append(r[1]), r)[1])(forward(feats, keep))
    task(ctx)
    assert [tuple(k.shape[-2:]) for k in keeps] == [(16, 16), (16, 16)]


def test_at_the_papers_sizes_both_views_give_16x16_deepest_maps_and_token_grids():
    """The real geometry: a 1024x1024 crop, detail crop 512, context scale 0.5, an encoder with MiT's
    strides (4, 8, 16, 32; pvt_v2_b0 here, MiT-B5 at paper scale), mask_unit 32."""
    student = hrda(detail_crop=(512, 512))
    assert student.feature_strides == [4, 8, 16, 32]
    with torch.no_grad():
        views = student.encode_views(torch.randn(1, 3, 1024, 1024))
    rebuilder = Rebuilder(student.feature_channels, student.feature_strides, mask_unit=32, depth=1, width=16, heads=1)
    for stages in (views.context, views.detail):
        assert tuple(stages[-1].shape[-2:]) == (16, 16)
        assert rebuilder.token_grid(stages[-1]) == (16, 16)


def test_mfm_masked_pixels_on_hrda_need_a_masked_token_in_some_view_they_are_decoded_from():
    ones = torch.ones(1, 1, 2, 2)
    ctx_keep = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # context: top-right quarter masked
    det_keep = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])  # detail crop: its bottom-left quarter masked
    box = (0, 32, 0, 32)  # the detail crop: the top-left quarter of a 64x64 input
    fused = visible([ctx_keep, det_keep], (64, 64), box, None)[0]
    assert float(fused[:32, 32:].max()) == 0  # masked in the context view
    assert float(fused[16:32, :16].max()) == 0  # kept by the context, masked in the detail crop
    assert float(fused[:16, :16].min()) == 1 and float(fused[32:, :].min()) == 1
    assert torch.equal(visible([ctx_keep, det_keep], (64, 64), box, box)[0],
                       F.interpolate(det_keep, size=(32, 32), mode="nearest")[0, 0])
    assert torch.equal(visible([ones], (8, 8), None, None), torch.ones(1, 8, 8))  # a single view


# --------------------------------------------------------------------------------------------------
# 5. the one-view tasks (contrastive, mim recon): the context view, the host's reused source pass

@pytest.mark.parametrize("name, options", [("contrastive", {"proj_dim": 16}),
                                           ("mim", {"variant": "recon", "block": 16})])
def test_one_view_tasks_on_hrda_read_the_context_view(name, options):
    student = hrda()
    task = AUX_TASKS.get(name)(options, student, 19)
    ctx = make_ctx(student)
    seen = encoder_inputs(student)
    teacher_seen = encoder_inputs(ctx.teacher)
    losses = task(ctx)
    assert seen and set(seen) == {(32, 32)}  # every student pass is a context view (64 * 0.5)
    assert set(teacher_seen) <= {(32, 32)}
    sum(losses.values()).backward()
    assert all(math.isfinite(float(v)) for v in losses.values())


def test_contrastive_on_hrda_reuses_the_hosts_context_view_of_the_source():
    student = hrda()
    task = AUX_TASKS.get("contrastive")({"proj_dim": 16, "target": False}, student, 19)
    ctx = make_ctx(student)
    assert task.reuses == {"source_features"}
    task(ctx)  # prototypes from the teacher's context view: non-zero from here on
    ctx.iteration = 2
    views = student.encode_views(ctx.source_image)
    ctx.extras["source_features"] = views.context  # what the dacs host leaves on HRDA
    state = copy.deepcopy(task.state_dict())
    reused = task(ctx)["source"]
    task.load_state_dict(state)
    del ctx.extras["source_features"]
    fresh = task(ctx)["source"]
    assert float(reused) > 0 and torch.allclose(reused, fresh, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# 6. zero test-time cost on HRDA

def flops(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


TASKS = {
    "mic": ("mim", {"variant": "mic", "block": 16}),
    "recon": ("mim", {"variant": "recon", "block": 16}),
    "mfm-target": ("mfm", {"mask_unit": 8, "preset": "tiny", "image": "target"}),
    "mfm-mixed": ("mfm", {"mask_unit": 8, "preset": "tiny", "image": "mixed"}),
    "contrastive": ("contrastive", {"proj_dim": 16}),
}


@pytest.mark.parametrize("task_id", TASKS)
def test_zero_test_time_cost_on_hrda(task_id):
    """After a task's step the student is HRDA alone: the host's state-dict keys, parameter count and
    inference FLOPs, no hooks, and a fresh HRDA loaded with its state dict predicts the same logits."""
    host = hrda()
    student = hrda()
    name, options = TASKS[task_id]
    task = AUX_TASKS.get(name)(options, student.train(), 19)
    losses = task(make_ctx(student))
    sum(losses.values()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in student.parameters() if p.grad is not None)
    with torch.no_grad():
        for p in student.parameters():  # a training step's change: the weights are no longer the host's
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    assert list(student.state_dict()) == list(host.state_dict())
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in host.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())
    assert not {id(p) for p in task.parameters()} & {id(p) for p in student.parameters()}
    x = images(1, torch.Generator().manual_seed(9), 64)
    assert flops(student.eval(), x) == flops(host.eval(), x) > 0
    alone = hrda(seed=1)
    alone.load_state_dict(student.state_dict())
    with torch.no_grad():
        out = student(x)
        assert torch.equal(out, alone(x)) and not torch.equal(out, host(x))


# --------------------------------------------------------------------------------------------------
# 7. the engine: smoke runs, reuse of the host's two views, determinism, resume

def smoke(smoke_config, out, *extra: str, aux: dict | None = None):
    # pseudo_threshold 0: every pseudo-label counts, so a few smoke iterations give the tasks non-zero losses
    return smoke_config(out, "method.pseudo_threshold=0", "eval.max_images=1", "selection.images=0", *extra,
                        arch="hrda", aux=aux)


RUNS = {  # what a run enables -> the losses it must log
    "fd": ((["method.fd.weight=0.5", "method.fd.classes=null", "method.teacher_bn=batch"], {}), ["fd"]),
    "mic": (([], {"mim": {"options": {"block": 16}}}), ["mim/mic"]),
    "mfm-mixed": (([], {"mfm": {"options": {"image": "mixed", "preset": "tiny", "mask_unit": 8}}}), ["mfm/ce"]),
    "mfm-target": (([], {"mfm": {"options": {"image": "target", "preset": "tiny", "mask_unit": 8,
                                               "loss_on": "masked"}}}), ["mfm/ce"]),
    "contrastive": (([], {"contrastive": {"options": {"proj_dim": 16}}}), ["contrastive/source", "contrastive/target"]),
}


@pytest.fixture(scope="module")
def host_run(smoke_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("hrda-dacs")
    seen = []
    train(smoke(smoke_config, out), on_eval=lambda it, m, d: seen.append(d), progress=False)
    return ckpt.load(seen[-1])


@pytest.mark.parametrize("run_id", RUNS)
def test_hrda_trains_with_each_extra_in_the_engine_at_zero_test_time_cost(smoke_config, tmp_path, host_run, run_id):
    (extra, aux), losses = RUNS[run_id]
    cfg = smoke(smoke_config, tmp_path, *extra, aux=aux)
    seen = []
    metrics = train(cfg, on_eval=lambda it, m, d: seen.append(d), progress=False)
    for name in ["sup", "uda", *losses]:
        assert math.isfinite(metrics[f"loss/{name}"]) and metrics[f"loss/{name}"] > 0, name
    state = ckpt.load(seen[-1])
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in host_run["model"].items()}
    model = create_segmentor("hrda", backbone=cfg.model.backbone, num_classes=19, **cfg.model.options)
    model.load_state_dict(state["model"])  # strict: exactly the host's keys
    host_model = create_segmentor("hrda", backbone=cfg.model.backbone, num_classes=19, **cfg.model.options)
    host_model.load_state_dict(host_run["model"])
    x = torch.randn(1, 3, *cfg.data.crop)
    assert flops(model.eval(), x) == flops(host_model.eval(), x) > 0


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_mfm_mixed_reuses_the_hosts_two_views_with_the_gradients_of_a_fresh_pass(smoke_config, tmp_path, monkeypatch):
    aux = {"mfm": {"options": {"image": "mixed", "preset": "tiny", "mask_unit": 8}}}
    trainer = Trainer(smoke(smoke_config, tmp_path, aux=aux), progress=False)
    src = default_collate([trainer.source_stream[0]])
    tgt = default_collate([trainer.target_stream[0]])
    boxes = []  # the detail crops the student's passes draw, set per variant below
    monkeypatch.setattr(HRDA, "detail_box", lambda self, h, w: boxes.pop(0))
    mfm = trainer.aux["mfm"]
    seen = {}
    forward = mfm.forward
    mfm.forward = lambda ctx: (seen.update(feats=ctx.extras.get("mixed_features")), forward(ctx))[1]

    def before(variant):
        # the source's crop, the mixed image's, and (fresh) MFM's own pass of the mixed image: the same crop
        boxes[:] = [(0, 32, 8, 40), (16, 48, 24, 56), (16, 48, 24, 56)]

    def after(variant):
        if variant == "reuse":
            assert isinstance(seen["feats"], Views) and seen["feats"].box == (16, 48, 24, 56)

    ran, grads = reuse_and_fresh(trainer, src, tgt, before, after)
    assert ran["reuse"][0] == 4 and ran["fresh"][0] == 6  # two views of source + mixed; MFM's own two more
    assert ran["reuse"][1] == pytest.approx(ran["fresh"][1], rel=1e-6)
    assert grads["reuse"].keys() == grads["fresh"].keys()
    # per tensor, relative to its norm; tensors whose gradient is zero in exact arithmetic (the attention
    # queries of stages with a single key at these sizes, biases followed by a BatchNorm) hold float noise
    # (norms ~1e-10): compared absolutely
    fresh = grads["fresh"]
    noise = {n for n, g in fresh.items() if float(g.norm()) < 1e-8}
    assert max(float((grads["reuse"][n] - fresh[n]).norm()) for n in noise) < 1e-8
    worst = max(float((g - fresh[n]).norm() / fresh[n].norm()) for n, g in grads["reuse"].items() if n not in noise)
    assert worst < 1e-4, worst


class _Killed(Exception):
    pass


def comparable(metrics: dict[str, float]) -> dict[str, float]:
    """Everything but the timings (NaN IoUs of absent classes compared as equal)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
            if k not in ("step_time", "throughput", "peak_mem_mb")}


@pytest.mark.parametrize("run_id", ["fd-mic", "mfm"])
def test_hrda_runs_are_deterministic_and_resume_bit_identically(smoke_config, tmp_path, run_id):
    if run_id == "fd-mic":
        extra, aux = ["method.fd.weight=0.5", "method.fd.classes=null"], {"mim": {"options": {"block": 16}}}
    else:
        extra, aux = [], {"mfm": {"options": {"image": "mixed", "preset": "tiny", "mask_unit": 8}}}
    finals = {}
    for name in ("a", "b"):
        seen = []
        finals[name] = train(smoke(smoke_config, tmp_path / name, *extra, aux=aux),
                             on_eval=lambda it, m, d, s=seen: s.append(d), progress=False)
        finals[name + "_state"] = ckpt.load(seen[-1])["model"]
    assert comparable(finals["a"]) == comparable(finals["b"])
    assert all(torch.equal(v, finals["b_state"][k]) for k, v in finals["a_state"].items())

    def kill_after_first_eval(iteration, metrics, folder):
        raise _Killed(iteration)

    cfg = smoke(smoke_config, tmp_path / "part", *extra, aux=aux)
    with pytest.raises(_Killed):
        train(cfg, on_eval=kill_after_first_eval, progress=False)
    folder = tmp_path / "part" / "checkpoint"
    assert ckpt.load(folder)["iteration"] == 2
    seen = []
    resumed = train(cfg, resume=folder, on_eval=lambda it, m, d: seen.append(d), progress=False)
    assert comparable(resumed) == comparable(finals["a"])
    state = ckpt.load(seen[-1])["model"]
    assert all(torch.equal(v, finals["a_state"][k]) for k, v in state.items())

"""`contrastive` as SePiCo's ProtoCL (issue 17): each recipe option does what it says on hand-made tensors
(the loss start with prototypes from iteration 0, the head's structure, the head EMA, the prototype
regulariser, the augmented source view, the reuse of the host's source pass), bad options are clear
errors, and dacs + contrastive with the paper recipe trains in the engine. The paper-scale values
against the official ones: tests/test_recipe.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.env import offline

offline()

from conftest import small_segmentor  # noqa: E402

from harness.config import ConfigError  # noqa: E402
from harness.engine.resolve import load_config  # noqa: E402
from harness.labels import IGNORE_INDEX  # noqa: E402
from harness.scales import AUX_RECIPE  # noqa: E402
from methods import AUX_TASKS  # noqa: E402
from methods.base import StepContext  # noqa: E402
from methods.contrastive import ProjectionHead, proto_reg  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SEPICO = AUX_RECIPE["contrastive"]["options"]  # the paper-scale options


def task_of(model, **options):
    torch.manual_seed(1)
    return AUX_TASKS.get("contrastive")({"proj_dim": 16, **options}, model, 19)


def make_ctx(model, iteration: int = 0, seed: int = 0, augment=None) -> StepContext:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (2, 4, 4), generator=g).repeat_interleave(16, 1).repeat_interleave(16, 2)
    return StepContext(
        iteration=iteration, source_image=torch.randn(2, 3, 64, 64, generator=g), source_label=label,
        target_image=torch.randn(2, 3, 64, 64, generator=g), student=model,
        teacher=copy.deepcopy(model).eval(), pseudo_label=label.flip(0),
        pseudo_weight=torch.full((2, 64, 64), 0.7), augment=augment)


def count_encodes(model) -> list[torch.Tensor]:
    """Wrap `model.encode` so each call in training mode records its input."""
    seen, encode = [], model.encode

    def counted(x):
        if model.training:
            seen.append(x)
        return encode(x)

    model.encode = counted
    return seen


# --------------------------------------------------------------------------------------------------
# the loss starts at `loss_start`; the prototypes and the head EMA from iteration 0

def test_no_loss_before_loss_start_but_the_prototypes_move_from_iteration_0():
    model = small_segmentor()
    task = task_of(model, loss_start=3)
    for it in range(3):
        before = task.proto_mean.clone()
        losses = task(make_ctx(model, iteration=it, seed=it))
        assert losses == {}, it  # nothing to back-propagate, no student pass
        assert not torch.equal(task.proto_mean, before), it
        task.after_optimizer_step(make_ctx(model, iteration=it))
    assert task.proto_count.sum() > 0
    losses = task(make_ctx(model, iteration=3, seed=3))
    assert set(losses) == {"source", "target"} and all(v.requires_grad and v > 0 for v in losses.values())


def test_before_loss_start_the_student_is_not_encoded():
    model = small_segmentor()
    task = task_of(model, loss_start=1)
    ctx0, ctx1 = make_ctx(model, iteration=0), make_ctx(model, iteration=1)  # (their teachers: copies)
    seen = count_encodes(model)
    task(ctx0)
    assert seen == []  # only the teacher encoded (the prototypes)
    task(ctx1)
    assert len(seen) == 2  # source and target views


# --------------------------------------------------------------------------------------------------
# the projection head

def test_sepico_head_is_conv_bn_relu_twice_with_mmcv_init():
    channels = [32, 64, 160, 256]
    head = ProjectionHead(channels, [0, 1, 2, 3], 512, "sepico")
    kinds = [type(m) for m in head.convs]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
    c1, c2 = head.convs[0], head.convs[3]
    assert (c1.in_channels, c1.out_channels, c2.out_channels) == (512, 512 // 4, 512)  # mid = C_in / stages
    assert c1.kernel_size == c2.kernel_size == (1, 1) and c1.bias is None and c2.bias is None
    # mmcv ConvModule.init_weights: kaiming_init(mode='fan_out', nonlinearity='relu', normal): std sqrt(2/fan_out)
    for conv in (c1, c2):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / conv.out_channels), rel=0.05)
    feats = [torch.randn(2, c, 16 // s, 16 // s) for c, s in zip(channels, (1, 2, 4, 8))]
    emb = head(feats)
    assert emb.shape == (2, 512, 16, 16)
    assert (emb >= 0).all()  # ReLU before the L2 normalisation: non-negative embeddings
    assert torch.allclose(emb.norm(dim=1), torch.ones(2, 16, 16), atol=1e-5)


def test_udabench_head_ends_in_a_plain_conv():
    head = ProjectionHead([512], [0], 64, "udabench")
    assert [type(m) for m in head.convs] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert head.convs[0].out_channels == 512 and head.convs[3].bias is not None  # one stage: mid = C_in
    assert (head([torch.randn(2, 512, 4, 4)]) < 0).any()


@pytest.mark.parametrize("arch", ["daformer", "deeplabv2"])
def test_the_task_builds_the_head_the_option_names(arch):
    model = small_segmentor(arch)
    assert len(task_of(model, head="sepico").head.convs) == 6
    assert len(task_of(model).head.convs) == 4


# --------------------------------------------------------------------------------------------------
# the teacher-side head EMA

def _perturb(head: nn.Module) -> None:
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))


def test_head_ema_is_0_999_of_the_teacher_side_head():
    model = small_segmentor()
    task = task_of(model, ema_alpha=0.999, head="sepico")
    _perturb(task.head)
    before = [p.clone() for p in task.head_ema.parameters()]
    task.after_optimizer_step(make_ctx(model, iteration=5000))
    for e, b, p in zip(task.head_ema.parameters(), before, task.head.parameters()):
        assert torch.allclose(e, 0.999 * b + 0.001 * p, atol=1e-6)
    # warm-up, as the host's and SePiCo's: alpha_t = min(1 - 1/(t+1), alpha)
    before = [p.clone() for p in task.head_ema.parameters()]
    task.after_optimizer_step(make_ctx(model, iteration=3))
    for e, b, p in zip(task.head_ema.parameters(), before, task.head.parameters()):
        assert torch.allclose(e, 0.75 * b + 0.25 * p, atol=1e-6)


def test_ema_bn_batch_uses_batch_statistics_and_averages_parameters_only():
    model = small_segmentor()
    task = task_of(model, ema_bn="batch")
    with torch.no_grad():
        task.head.convs[1].running_mean.fill_(5.0)
    task.after_optimizer_step(make_ctx(model, iteration=10))
    assert not torch.equal(task.head_ema.convs[1].running_mean, task.head.convs[1].running_mean)
    # the prototypes come from the teacher-side head with BN on the source batch's statistics
    ctx = make_ctx(model)
    task(ctx)
    feats = list(ctx.teacher.encode(ctx.source_image))
    ref = copy.deepcopy(task.head_ema).train()
    emb = ref(feats)
    assert ref.convs[1].training
    mean_of_class = emb.permute(0, 2, 3, 1)[F.interpolate(
        ctx.source_label[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long() == 0].mean(0)
    assert torch.allclose(task.proto_mean[0], mean_of_class, atol=1e-5)


def test_ema_bn_running_copies_the_heads_buffers():
    model = small_segmentor()
    task = task_of(model)
    with torch.no_grad():
        task.head.convs[1].running_mean.fill_(5.0)
    task.after_optimizer_step(make_ctx(model, iteration=10))
    assert torch.equal(task.head_ema.convs[1].running_mean, task.head.convs[1].running_mean)


# --------------------------------------------------------------------------------------------------
# the prototype regulariser

def test_proto_reg_equals_a_hand_computation():
    feat = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean (0.5, 0.5)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # similarities 0.5, 0.5, 1.0
    t = 0.5  # logits 1, 1, 2
    z = math.log(2 * math.e + math.e ** 2)
    hand = ((1 - z) + (1 - z) + (2 - z)) / (3 * math.log(3))
    assert proto_reg(feat, protos, t).item() == pytest.approx(hand, abs=1e-6)
    # at most -1, exactly -1 when the mean embedding is equally similar to every prototype
    assert hand < -1
    assert proto_reg(feat, torch.ones(3, 2), t).item() == pytest.approx(-1.0, abs=1e-6)


def test_proto_reg_stays_near_minus_one_at_sepicos_temperature():
    g = torch.Generator().manual_seed(0)
    feat = F.normalize(torch.randn(100, 64, generator=g), dim=1)
    protos = F.normalize(torch.randn(19, 64, generator=g), dim=1)
    assert abs(proto_reg(feat, protos, 100.0).item() + 1) < 1e-4


def test_the_view_loss_is_protocl_plus_reg_weight_times_the_regulariser():
    model = small_segmentor()
    task = task_of(model, reg_weight=0.5, temperature=2.0)
    with torch.no_grad():
        task.proto_mean.copy_(F.normalize(torch.randn(19, 16), dim=1))
    emb = F.normalize(torch.randn(1, 16, 2, 2), dim=1).requires_grad_()
    label = torch.tensor([[[0, 3], [IGNORE_INDEX, 3]]])
    f = emb.detach().permute(0, 2, 3, 1).reshape(-1, 16)[[0, 1, 3]]
    ce = F.cross_entropy(f @ task.proto_mean.t() / 2.0, torch.tensor([0, 3, 3]))
    expected = ce + 0.5 * proto_reg(f, task.proto_mean, 2.0)
    assert task.proto_loss(emb, label).item() == pytest.approx(expected.item(), abs=1e-6)
    off = task_of(model, temperature=2.0)
    off.proto_mean.copy_(task.proto_mean)
    assert off.proto_loss(emb, label).item() == pytest.approx(ce.item(), abs=1e-6)
    empty = task.proto_loss(emb, torch.full_like(label, IGNORE_INDEX))
    assert empty.item() == 0.0 and empty.requires_grad


# --------------------------------------------------------------------------------------------------
# the views: the strongly augmented source, the host's source pass reused for the clean one

def test_source_aug_contrasts_the_hosts_strong_augmentation_of_the_source():
    model = small_segmentor()
    augmented = []

    def augment(x):
        augmented.append(x)
        return x * 0.5

    ctx = make_ctx(model, augment=augment)
    seen = count_encodes(model)
    ctx.extras["source_features"] = [torch.zeros(1)]  # the host's clean pass: not this view
    task_of(model, source_aug=True, target=False)(ctx)
    assert len(augmented) == 1 and augmented[0] is ctx.source_image
    assert len(seen) == 1 and torch.equal(seen[0], ctx.source_image * 0.5)


def test_the_clean_source_view_reuses_the_hosts_pass_with_the_same_loss_and_gradients():
    model = small_segmentor()
    task = task_of(model, target=False)
    assert task.reuses == frozenset({"source_features"})
    assert task_of(model, source_aug=True).reuses == frozenset()
    assert task_of(model, source=False).reuses == frozenset()
    cleared = task_of(model)
    cleared.reuses = frozenset()  # as a benchmark clears it: the task then encodes the source itself
    assert cleared.reuses == frozenset()
    ctx = make_ctx(model)
    own = task(ctx)["source"]
    own.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ctx = make_ctx(model)
    ctx.extras["source_features"] = model.encode(ctx.source_image)  # what the host leaves
    seen = count_encodes(model)
    reused = task(ctx)["source"]
    assert seen == []  # no second pass of the source
    reused.backward()
    assert reused.item() == own.item()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, [p for p in model.parameters() if p.grad is not None]))


def test_the_host_keeps_its_source_pass_only_from_loss_start():
    model = small_segmentor()
    task = task_of(model, loss_start=2)
    assert task.reuses == frozenset()  # iteration 0: no loss, no pass to keep
    task.after_optimizer_step(make_ctx(model, iteration=0))
    assert task.reuses == frozenset()
    task.after_optimizer_step(make_ctx(model, iteration=1))
    assert task.reuses == frozenset({"source_features"})  # iteration 2


# --------------------------------------------------------------------------------------------------
# bad options

@pytest.mark.parametrize("option, message", [
    ("loss_strat=3000", r"method\.aux\.contrastive\.options: loss_strat: unknown key \(did you mean 'loss_start'\?\)"),
    ("head=mlp", r"method\.aux\.contrastive\.options: head: .*'udabench' or 'sepico'"),
    ("ema_bn=frozen", r"method\.aux\.contrastive\.options: ema_bn: .*'running' or 'batch'"),
    ("reg_weight=-1", r"method\.aux\.contrastive\.options: reg_weight: .*greater than or equal to 0"),
    ("loss_start=-5", r"method\.aux\.contrastive\.options: loss_start: .*greater than or equal to 0"),
    ("ema_alpha=1.5", r"method\.aux\.contrastive\.options: ema_alpha: .*less than or equal to 1"),
])
def test_bad_options_name_the_field(option, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"method.aux.contrastive.options.{option}"])


def test_no_view_at_all_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"method\.aux\.contrastive\.options: target: .*source and target "
                                          r"are both false; enable at least one"):
        load_config(None, ["method.aux.contrastive.options.source=false",
                           "method.aux.contrastive.options.target=false"])


# --------------------------------------------------------------------------------------------------
# in the engine: dacs + contrastive

def _trainer(smoke_config, out, arch, options, overrides=()):
    from harness.engine.training import Trainer

    cfg = smoke_config(out, "method.pseudo_threshold=0", *overrides, arch=arch,
                       aux={"contrastive": {"options": {"proj_dim": 16, **options}}})
    return Trainer(cfg, progress=False)


@pytest.mark.parametrize("arch", ["daformer", "deeplabv2"])
def test_dacs_with_the_paper_recipe_trains_with_the_loss_from_loss_start(smoke_config, tmp_path, arch):
    trainer = _trainer(smoke_config, tmp_path, arch, {**SEPICO, "loss_start": 2})
    task = trainer.aux["contrastive"]
    assert len(task.head.convs) == 6 and task.opts.reg_weight == 1.0 and task.opts.source_aug
    head0 = [p.clone() for p in task.head.parameters()]
    seen = []
    trainer.on_eval = lambda it, metrics, _: seen.append((it, metrics))
    trainer.run()
    (it2, first), (it4, last) = seen
    assert (it2, it4) == (2, 4)
    assert not any(k.startswith("loss/contrastive") for k in first)  # iterations 0-1: no loss ...
    assert task.proto_count.sum() > 0                                 # ... prototypes from iteration 0
    for name in ("loss/contrastive/source", "loss/contrastive/target"):
        assert math.isfinite(last[name])  # includes the regulariser (about -1)
    assert any(not torch.equal(a, b) for a, b in zip(head0, task.head.parameters()))


def test_prototypes_update_although_the_loss_never_starts(smoke_config, tmp_path):
    trainer = _trainer(smoke_config, tmp_path, "daformer", {"loss_start": 100},
                       ["schedule.iterations=2", "eval.interval=2"])
    task = trainer.aux["contrastive"]
    head0 = [p.clone() for p in task.head.parameters()]
    metrics = trainer.run()
    assert not any(k.startswith("loss/contrastive") for k in metrics)
    assert task.proto_count.sum() > 0 and task.proto_mean.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(head0, task.head.parameters()))  # no gradient reached it


@pytest.mark.parametrize("source_aug, passes", [(False, 3), (True, 4)])
def test_the_engine_step_reuses_the_hosts_source_pass_for_the_clean_view(smoke_config, tmp_path, source_aug,
                                                                          passes):
    """Student encoder passes per step: the host's source and mixed passes, the task's target view, and
    the task's source view only when it differs from the host's (`source_aug`)."""
    trainer = _trainer(smoke_config, tmp_path, "daformer", {"source_aug": source_aug},
                       ["schedule.iterations=1", "eval.interval=1"])
    seen = count_encodes(trainer.model)
    trainer.run()
    assert len(seen) == passes

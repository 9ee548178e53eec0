"""Auxiliary tasks inside the real training engine: each task trains with `dacs` on both CPU-scale
architectures, logs its losses by name, checkpoints its own parts under `aux`, and leaves the evaluated
model exactly the host's (same state-dict keys, parameter count and forward FLOPs as a `dacs` run)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.engine import checkpoint as ckpt
from harness.engine.training import train
from harness.models import create_segmentor

ARCHS = {"deeplabv2": "resnet18", "daformer": "pvt_v2_b0"}
# task -> (method.aux entry, the loss names it logs, a key of its own checkpointed parts)
TASKS = {
    "contrastive": ({"contrastive": {"options": {"proj_dim": 32}}},
                    ["contrastive/source", "contrastive/target"], "contrastive.head.convs.0.weight"),
    "mim": ({"mim": {"options": {"variant": "recon", "target": "hog"}}}, ["mim/hog"], "mim.decoder.weight"),
    "mfm": ({"mfm": {"weight": 0.5, "lr_mult": 3.0, "options": {"preset": "tiny", "mask_unit": 16}}},
            ["mfm/ce"], "mfm.rebuilder.mask_token"),
}


def run(smoke_config, out, arch, aux=None):
    # pseudo_threshold 0: every pseudo-label counts (weight 1), so a few smoke iterations give the tasks
    # non-zero losses (an untrained teacher is never 0.968-confident, which would make them all 0)
    cfg = smoke_config(out, "method.pseudo_threshold=0", arch=arch, aux=aux)
    seen = []
    metrics = train(cfg, on_eval=lambda it, m, d: seen.append((it, m, d)), progress=False)
    return cfg, metrics, ckpt.load(seen[-1][2]), seen


def flops(cfg, state) -> int:
    m = cfg.model
    model = create_segmentor(m.arch, backbone=m.backbone, num_classes=19, **m.options)
    model.load_state_dict(state["model"])  # strict: exactly the host's keys
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, *cfg.data.crop))
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def dacs_runs(smoke_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("dacs")
    return {arch: run(smoke_config, out / arch, arch) for arch in ARCHS}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_task_trains_in_the_engine_at_zero_inference_cost(smoke_config, tmp_path, dacs_runs, arch, task):
    aux, losses, own_key = TASKS[task]
    cfg, metrics, state, _ = run(smoke_config, tmp_path / "run", arch, aux)
    host_cfg, _, host_state, _ = dacs_runs[arch]
    for name in losses:
        assert math.isfinite(metrics[f"loss/{name}"]) and metrics[f"loss/{name}"] > 0
    # the evaluated / exported network is the host's: same keys, shapes, parameter count, FLOPs
    assert list(state["model"]) == list(host_state["model"])
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in host_state["model"].items()}
    assert flops(cfg, state) == flops(host_cfg, host_state) > 0
    # the task's own parts are trained and checkpointed beside it, never inside it
    assert own_key in state["aux"] and not any(k in state["model"] for k in state["aux"])
    assert not any(k.startswith(f"{task}.") for k in host_state["aux"])
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    spec = cfg.method.aux[task]
    assert groups[f"aux/{task}"]["initial_lr"] == pytest.approx(cfg.optim.lr * spec.lr_mult)


def test_task_waits_for_its_start_iteration(smoke_config, tmp_path):
    aux = {"mfm": {"start_iter": 2, "options": {"preset": "tiny", "mask_unit": 16}}}
    _, _, _, seen = run(smoke_config, tmp_path / "run", "daformer", aux)
    (it1, first, _), (it2, second, _) = seen
    assert (it1, it2) == (2, 4)
    assert "loss/mfm/ce" not in first and second["loss/mfm/ce"] > 0

"""GPU settings (issue 17): autocast dtype, GradScaler, cuDNN, pinned memory, evaluation batch.

They cannot be timed here (no GPU): the tests check that each resolves as intended on the CPU and on a
mocked CUDA device (torch.cuda.get_device_capability patched), that `apply_settings` sets torch's
switches, and that the engine uses what was resolved (a Trainer given CUDA-like settings on the CPU:
bf16 autocast in the training step and in evaluation, several images per evaluation forward)."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict

import pytest
import torch
import yaml
from torch import nn

from harness.env import offline

offline()

from harness.config import ConfigError, RunConfig  # noqa: E402
from harness.engine import runtime  # noqa: E402
from harness.engine.evaluation import MEAN, STD, collate_by_size, evaluate, val_loader  # noqa: E402
from harness.engine.runtime import apply_settings, resolve_settings, settings_for  # noqa: E402


def cfg_with(**fields) -> RunConfig:
    data = RunConfig().to_dict()
    for path, value in fields.items():
        node, keys = data, path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return RunConfig.model_validate(data)


@pytest.fixture
def torch_switches():
    """Restore torch's process-wide switches (and the cuBLAS variable) after a test that sets them."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def mock_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)


# --------------------------------------------------------------------------------------------------
# resolution

def test_cpu_keeps_the_recorded_way_whatever_the_gpu_fields_say():
    for cfg in (RunConfig(), cfg_with(amp_dtype="bf16"), cfg_with(amp_dtype="fp16", deterministic=True)):
        s = settings_for(cfg, "cpu")
        assert (s.autocast_dtype, s.grad_scaler, s.cudnn_benchmark, s.deterministic_algorithms) == (None, False,
                                                                                                     False, False)
        assert (s.pin_memory, s.non_blocking, s.eval_batch_size, s.precision) == (False, False, 1, "fp32")
    assert settings_for(cfg_with(eval__batch_size=3), "cpu").eval_batch_size == 3  # asked for: used on CPU too


def test_ampere_and_newer_train_in_bf16_without_gradscaler(monkeypatch):
    for capability in ((8, 0), (8, 6), (9, 0)):  # A100, RTX 30xx, H100
        mock_gpu(monkeypatch, capability)
        s = settings_for(RunConfig(), torch.device("cuda", 0))
        assert s.autocast_dtype is torch.bfloat16 and not s.grad_scaler
        assert s.cudnn_benchmark and not s.deterministic_algorithms
        assert s.pin_memory and s.non_blocking and s.eval_batch_size == runtime.EVAL_BATCH_CUDA > 1
        assert s.as_params()["runtime.precision"] == "bf16" and s.as_params()["runtime.grad_scaler"] == "false"


def test_older_gpus_train_in_fp16_with_gradscaler(monkeypatch):
    mock_gpu(monkeypatch, (7, 5))  # T4, RTX 20xx (the official DAFormer runs: RTX 2080 Ti)
    s = settings_for(RunConfig(), "cuda")
    assert s.autocast_dtype is torch.float16 and s.grad_scaler and s.precision == "fp16"
    monkeypatch.setattr(torch.version, "hip", "6.2")  # every ROCm GPU torch supports computes bf16
    assert settings_for(RunConfig(), "cuda").autocast_dtype is torch.bfloat16


def test_explicit_precision_choices(monkeypatch):
    mock_gpu(monkeypatch, (9, 0))
    fp16 = settings_for(cfg_with(amp_dtype="fp16"), "cuda")
    assert fp16.autocast_dtype is torch.float16 and fp16.grad_scaler
    fp32 = settings_for(cfg_with(amp=False), "cuda")
    assert fp32.autocast_dtype is None and not fp32.grad_scaler and fp32.precision == "fp32"
    mock_gpu(monkeypatch, (7, 0))
    with pytest.raises(ConfigError, match=r"amp_dtype: 'bf16'.*device cuda:1.*expected 'auto' or 'fp16'"):
        settings_for(cfg_with(amp_dtype="bf16"), "cuda:1")


def test_deterministic_is_an_opt_in_that_turns_the_benchmark_off(monkeypatch):
    mock_gpu(monkeypatch, (8, 0))
    s = settings_for(cfg_with(deterministic=True), "cuda")
    assert s.deterministic_algorithms and not s.cudnn_benchmark
    assert not settings_for(cfg_with(cudnn_benchmark=False), "cuda").cudnn_benchmark
    assert resolve_settings(RunConfig(), "cuda", bf16=True) == settings_for(RunConfig(), "cuda")


def test_apply_settings_sets_torch_switches(monkeypatch, torch_switches):
    mock_gpu(monkeypatch, (8, 0))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    apply_settings(settings_for(RunConfig(), "cuda"))
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    apply_settings(settings_for(cfg_with(deterministic=True), "cuda"))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    # warn-only: bilinear upsampling's backward has no deterministic CUDA kernel (an error would stop every run)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    apply_settings(settings_for(RunConfig(), "cpu"))  # the next run in the process starts clean
    assert not (torch.backends.cudnn.benchmark or torch.backends.cudnn.deterministic
                or torch.are_deterministic_algorithms_enabled())


def test_config_hashes_ignore_the_kernel_choice_but_not_the_precision():
    base = RunConfig()
    assert cfg_with(cudnn_benchmark=False).hash() == base.hash() == cfg_with(deterministic=True).hash()
    assert cfg_with(amp_dtype="fp16").hash() != base.hash() != cfg_with(amp=False).hash()
    assert cfg_with(eval__batch_size=2).hash() != base.hash()


# --------------------------------------------------------------------------------------------------
# evaluation: several images per forward, mixed sizes, sliding windows, autocast

class RedChannelClassifier(nn.Module):
    """Class round(R / 10) of the un-normalised red channel, through a 1x1 convolution (so autocast
    changes its dtype); records the batch size and the autocast state of each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)
        with torch.no_grad():  # logit_c = -(R/10 - c)^2 up to a per-pixel constant: peaks at c = round(R/10)
            c = torch.arange(19, dtype=torch.float32)
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 0, 0] = 2 * c * STD[0] / 10
            self.conv.bias.copy_(2 * c * MEAN[0] / 10 - c ** 2)
        self.calls: list[tuple[int, bool, torch.dtype]] = []

    def forward(self, x):
        out = self.conv(x)
        self.calls.append((x.shape[0], torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def image_item(classes: torch.Tensor, name: str) -> dict:
    red = (classes * 10).to(torch.uint8)
    return {"image": torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)]),
            "label": classes.clone(), "name": name}


def mixed_size_items(classes: int = 19) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    sizes = [(6, 8)] * 3 + [(4, 10)] * 2 + [(6, 8)] * 2
    items = [image_item(torch.randint(0, classes, s, generator=g), f"i{k}") for k, s in enumerate(sizes)]
    items[1]["label"][0, 0] = 255
    items[4]["label"][1] = (items[4]["label"][1] + 1) % classes  # a wrong row: not every IoU is 1
    return items


def test_collate_stacks_runs_of_same_size_items_in_order():
    items = mixed_size_items()
    batch = collate_by_size(items[:5])
    assert [b["image"].shape[0] for b in batch] == [3, 2] and [b["name"] for b in batch][1] == ["i3", "i4"]
    single = collate_by_size(items[:3])
    assert isinstance(single, dict) and single["label"].shape == (3, 6, 8)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_batched_evaluation_equals_one_image_at_a_time(mode):
    items = mixed_size_items()
    window = {"crop": (4, 4), "stride": (3, 3)} if mode == "slide" else {}
    one_model, batched_model = RedChannelClassifier(), RedChannelClassifier()
    one = evaluate(one_model, val_loader(items, batch_size=1), "cpu", mode=mode, **window)
    batched = evaluate(batched_model, val_loader(items, batch_size=3), "cpu", mode=mode, **window)
    assert one == batched and batched["num_images"] == 7 and one["miou"] < 1
    assert max(n for n, _, _ in batched_model.calls) == 3 and max(n for n, _, _ in one_model.calls) == 1
    capped = evaluate(RedChannelClassifier(), val_loader(items, batch_size=4), "cpu", mode=mode, max_images=5,
                      **window)
    assert capped == evaluate(RedChannelClassifier(), items[:5], "cpu", mode=mode, **window)


def test_evaluation_runs_the_forward_in_autocast():
    items = mixed_size_items(classes=4)  # logits up to 2 * 3 * 3: bf16 keeps their unit margins
    model = RedChannelClassifier()
    fp32 = evaluate(model, val_loader(items, batch_size=2), "cpu")
    assert {(amp, dtype) for _, amp, dtype in model.calls} == {(False, torch.float32)}
    model.calls.clear()
    bf16 = evaluate(model, val_loader(items, batch_size=2), "cpu", autocast_dtype=torch.bfloat16)
    assert {(amp, dtype) for _, amp, dtype in model.calls} == {(True, torch.bfloat16)}
    assert bf16 == fp32 and fp32["miou"] < 1


# --------------------------------------------------------------------------------------------------
# the engine uses what was resolved

def test_cpu_run_records_what_it_resolved(smoke_config, tmp_path, torch_switches):
    from harness.engine.training import Trainer

    cfg = smoke_config(tmp_path / "run", "method.host=source_only", "schedule.iterations=1", "eval.interval=1",
                       "eval.max_images=1")
    trainer = Trainer(cfg, progress=False)
    assert trainer.settings == resolve_settings(cfg, "cpu") and not trainer.scaler.is_enabled()
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    trainer.run()
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "# runtime.precision: fp32" in text and "# runtime.eval_batch_size: 1" in text
    assert RunConfig.model_validate(yaml.safe_load(text)) == cfg  # still a loadable config


def test_trainer_trains_and_evaluates_under_the_resolved_settings(smoke_config, tmp_path, monkeypatch, torch_switches):
    """CUDA-like settings (bf16 autocast, 2 images per evaluation forward) on the CPU: the training step
    and the evaluation run under them."""
    from harness.engine.training import Trainer

    def cuda_like(cfg, device):
        return dataclasses.replace(resolve_settings(cfg, "cuda", bf16=True), device_type="cpu",
                                   pin_memory=False, non_blocking=False, eval_batch_size=2)

    monkeypatch.setattr(runtime, "settings_for", cuda_like)
    cfg = smoke_config(tmp_path / "run", "method.host=source_only", "eval.max_images=4")
    trainer = Trainer(cfg, progress=False)
    assert torch.backends.cudnn.benchmark  # applied
    seen: list[tuple[int, bool]] = []
    trainer.model.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[0],
                                                                          torch.is_autocast_enabled("cpu"))))
    trainer.model.train()
    src, tgt = (next(iter(torch.utils.data.DataLoader(s, batch_size=1)))
                for s in (trainer.source_stream, trainer.target_stream))
    sums: dict[str, float] = defaultdict(float)
    trainer.step(src, tgt, sums)
    assert seen and all(amp for _, amp in seen) and sums["sup"] > 0
    seen.clear()
    from harness.engine import evaluation

    calls = []  # the validation's forwards (other evaluations, e.g. selection criteria, may follow)

    def validation(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        calls.extend(seen)
        return result

    monkeypatch.setattr(evaluation, "evaluate", validation)
    metrics = trainer.evaluate()
    assert calls == [(2, True), (2, True)]
    assert 0 <= metrics["target_miou"] <= 100

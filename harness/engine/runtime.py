"""How a run uses its device: autocast dtype, GradScaler, cuDNN, pinned memory, evaluation batch.

`resolve_settings(cfg, device_type, bf16)` is a pure function of the config and what the device offers;
`settings_for(cfg, device)` asks torch what the device offers; `apply_settings` sets torch's global
switches. The engine (training.py, evaluation.py) uses the resolved `DeviceSettings`, never the raw config
fields, so what ran is what `DeviceSettings.describe()` / `as_params()` say.

CPU: fp32, no GradScaler, no pinned memory, one image per evaluation forward (unless `eval.batch_size`
says otherwise): the way the recorded results were made, bit for bit deterministic.
CUDA: autocast in bf16 where the GPU has it natively (compute capability 8+: A100, H100, RTX 30xx and later;
no GradScaler, no overflow-skipped steps), else fp16 with GradScaler; `cudnn.benchmark` on unless
`deterministic`; pinned loader memory with non-blocking copies; evaluation in the same autocast, 4 images
per forward. `deterministic: true` on CUDA sets `cudnn.deterministic`, turns the benchmark off and calls
`torch.use_deterministic_algorithms(True, warn_only=True)`: warn-only because bilinear upsampling's
backward (every segmentor's loss) has no deterministic CUDA kernel, so bit-for-bit CUDA runs are not
reachable with these models; the flag removes the other sources of run-to-run variation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from harness.config import ConfigError, RunConfig

EVAL_BATCH_CUDA = 4  # images per evaluation forward on CUDA (paper scale: 1024x512 whole images)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


@dataclass(frozen=True)
class DeviceSettings:
    device_type: str                     # "cpu" | "cuda"
    autocast_dtype: torch.dtype | None   # None: fp32, no autocast
    grad_scaler: bool                    # fp16 only (bf16 has fp32's exponent range)
    cudnn_benchmark: bool
    deterministic_algorithms: bool       # cudnn.deterministic + torch.use_deterministic_algorithms
    pin_memory: bool                     # DataLoader pin_memory
    non_blocking: bool                   # host-to-device copies (asynchronous only from pinned memory)
    eval_batch_size: int

    @property
    def precision(self) -> str:
        return _NAMES[self.autocast_dtype]

    def as_params(self) -> dict[str, str]:
        """The resolved values as flat strings (MLflow params / tags: `runtime.<name>`)."""
        return {"runtime.precision": self.precision, "runtime.grad_scaler": str(self.grad_scaler).lower(),
                "runtime.cudnn_benchmark": str(self.cudnn_benchmark).lower(),
                "runtime.deterministic_algorithms": str(self.deterministic_algorithms).lower(),
                "runtime.pin_memory": str(self.pin_memory).lower(),
                "runtime.eval_batch_size": str(self.eval_batch_size)}

    def describe(self) -> str:
        """One line: what the run uses on its device."""
        scaler = " with GradScaler" if self.grad_scaler else ""
        return (f"{self.precision}{scaler}, cudnn.benchmark "
                f"{'on' if self.cudnn_benchmark else 'off'}, deterministic algorithms "
                f"{'on' if self.deterministic_algorithms else 'off'}, pinned memory "
                f"{'on' if self.pin_memory else 'off'}, {self.eval_batch_size} image(s) per evaluation batch")


def resolve_settings(cfg: RunConfig, device_type: str, bf16: bool = False, where: str = "") -> DeviceSettings:
    """The settings of a run of `cfg` on a device of type `device_type` ("cpu" / "cuda"); `bf16`: the
    device computes bf16 natively. An explicit `amp_dtype: bf16` on a CUDA device without it is an error."""
    cuda = device_type == "cuda"
    dtype = None
    if cuda and cfg.amp:
        if cfg.amp_dtype == "bf16" and not bf16:
            raise ConfigError(f"amp_dtype: 'bf16' requested, but {where or 'this CUDA device'} has no native "
                              "bf16 (compute capability 8.0 or newer); expected 'auto' or 'fp16' here")
        dtype = _DTYPES[cfg.amp_dtype] if cfg.amp_dtype != "auto" else (torch.bfloat16 if bf16 else torch.float16)
    deterministic = cuda and cfg.deterministic
    return DeviceSettings(
        device_type=device_type, autocast_dtype=dtype, grad_scaler=dtype is torch.float16,
        cudnn_benchmark=cuda and cfg.cudnn_benchmark and not deterministic,
        deterministic_algorithms=deterministic, pin_memory=cuda, non_blocking=cuda,
        eval_batch_size=cfg.eval.batch_size or (EVAL_BATCH_CUDA if cuda else 1))


def native_bf16(device: torch.device) -> bool:
    """The CUDA device computes bf16 natively (Ampere or newer; every ROCm GPU torch supports)."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def settings_for(cfg: RunConfig, device: torch.device | str) -> DeviceSettings:
    device = torch.device(device)
    if device.type != "cuda":
        return resolve_settings(cfg, device.type)
    return resolve_settings(cfg, "cuda", native_bf16(device), where=f"device {device}")


def apply_settings(s: DeviceSettings) -> None:
    """Set torch's process-wide switches for a run with settings `s` (every run sets all of them)."""
    if s.deterministic_algorithms:  # cuBLAS is deterministic only with a fixed workspace (set before its first use)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    torch.backends.cudnn.deterministic = s.deterministic_algorithms
    torch.use_deterministic_algorithms(s.deterministic_algorithms, warn_only=True)


def autocast(s: DeviceSettings) -> Any:
    """The autocast context of a forward pass under `s` (disabled for fp32)."""
    return torch.autocast(s.device_type, dtype=s.autocast_dtype or torch.float16, enabled=s.autocast_dtype is not None)


def record(s: DeviceSettings, device: torch.device, path) -> None:
    """Append the resolved settings to the run's `config.yaml` as YAML comments (the file stays a loadable
    config; a reader sees what ran: `auto` resolved, the device's choices made)."""
    lines = [f"# resolved on {device} (harness.engine.runtime): {s.describe()}"]
    lines += [f"# {k}: {v}" for k, v in s.as_params().items()]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")

"""Checkpoints are data, never code: plain dicts of tensors and numbers, read with weights_only=True.

A checkpoint (`checkpoint.pt`) holds: config (the resolved RunConfig as a dict), iteration, model (the
student, the exact host network), host (e.g. the EMA teacher), aux (auxiliary tasks' own parts),
optimizer, scheduler, scaler, rng (python, numpy, torch, cuda) and history (evaluations so far).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILENAME = "checkpoint.pt"


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a folder holding `checkpoint.pt`."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    return p


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    if path.suffix != ".pt":
        path = path / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = resolve(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncation, code objects refused by weights_only
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{p}: not a readable udabench checkpoint, truncated or corrupted? "
                         f"({type(e).__name__}: {first})") from None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *map(float, np_state[2:])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

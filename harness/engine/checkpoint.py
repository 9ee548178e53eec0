"""Checkpoints are data, never code: plain dicts of tensors and numbers, read with weights_only=True.

A checkpoint (`checkpoint.pt`) holds: config (the resolved RunConfig as a dict), iteration, model (the
student, the exact host network), host (e.g. the EMA teacher), aux (auxiliary tasks' own parts),
optimizer, scheduler, scaler, rng (python, numpy, torch, cuda) and history (evaluations so far).
With `checkpoint_keep` other than `last`, the evaluated model's weights of each evaluation are kept
beside it as `iter_<iteration>.pt` (`keep`).
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


KEPT = "iter_{:06d}.pt"  # the weights kept at an evaluation (`checkpoint_keep`), beside FILENAME


def keep(config: dict[str, Any], iteration: int, model: torch.nn.Module, metrics: dict[str, float],
         folder: str | Path, rule: str | int) -> Path | None:
    """Keep the evaluated model's weights of this evaluation as `folder/iter_<iteration>.pt` (config,
    iteration, model, metrics: what `udabench eval` reads; no optimiser state, about a third of a full
    checkpoint), so a checkpoint chosen after the fact (`udabench report --select`) can be deployed.
    `rule`: `last` keeps none (the training checkpoint FILENAME holds the last), `all` every one, N the N
    most recent (older kept files are deleted). Returns the file written, or None."""
    if rule == "last":
        return None
    folder = Path(folder)
    path = save({"config": config, "iteration": int(iteration), "model": model.state_dict(),
                 "metrics": {k: float(v) for k, v in metrics.items()}}, folder / KEPT.format(int(iteration)))
    if isinstance(rule, int):
        kept = sorted((p for p in folder.glob("iter_*.pt") if p.stem[len("iter_"):].isdigit()),
                      key=lambda p: int(p.stem[len("iter_"):]))
        for old in kept[:-rule]:
            old.unlink(missing_ok=True)
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

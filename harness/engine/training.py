"""The training engine: one iteration-based loop for every host method and auxiliary task.

Per iteration: one source batch and one target batch -> `host.step` (its losses, back-propagated one
by one in the recipe's order; pseudo-labels for the tasks) -> each auxiliary task's losses, weighted by
its lambda -> optimiser step -> EMA update. Every `eval.interval` iterations (and at the end): evaluate
the student on the target validation split, write a checkpoint, call `on_eval`. Every `log_interval`
iterations (multiples of it, so a resumed run logs the same steps; and at the end): call `on_log` with
the means since the previous log (losses, `stat/*`, throughput, step time, lr), for dense curves.

Determinism: the sample drawn at position k of the stream is a pure function of (seed, k), so a run
resumed from a checkpoint sees exactly the data an uninterrupted run sees; with the RNG states in the
checkpoint, the resumed run ends with identical metrics.
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config import RunConfig, save_config, without_later_defaults
from harness.engine import checkpoint as ckpt
from harness.engine import runtime
from harness.engine.resolve import RecipeWarning, recipe_warnings
from harness.errors import UsageError
from harness.labels import CLASSES, NUM_CLASSES

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

OnEval = Callable[[int, dict[str, float], Path], None]
OnLog = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the loss and the iteration."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def metric_key(class_name: str) -> str:
    return "iou/" + class_name.replace(" ", "_")


# ---------------------------------------------------------------------------------------------------
# data: a stateless, resumable sample stream

class SampleStream(torch.utils.data.Dataset):
    """Maps a global sample number k to a dataset item: epoch = k // N, index = perm_epoch[k % N].

    With rare-class sampling (DAFormer), sample k first draws a class c with P(c) = softmax((1 - f_c)/T)
    and then an image holding at least `min_pixels` of c. Either way the draw depends only on (seed, k).
    With `min_crop_ratio` > 0 (DAFormer's `min_crop_ratio`), the dataset re-draws that image's crop (up
    to `harness.data.dataset.CROP_ATTEMPTS` times) until it holds more than `min_pixels * min_crop_ratio`
    pixels of c (`SegDataset.item(..., rare_class=c)`), from a generator seeded with (seed, epoch, index, k).
    """

    def __init__(self, dataset, seed: int, rcs: tuple[float, int] | None = None,
                 min_crop_ratio: float = 0.0) -> None:
        self.dataset, self.seed, self.n = dataset, seed, len(dataset)
        self.min_crop_pixels = None
        if self.n == 0:
            raise ValueError(f"dataset {getattr(dataset, 'root', dataset)} is empty")
        self.rcs = None
        if rcs is not None:
            temperature, min_pixels = rcs
            counts = np.asarray(dataset.class_pixel_counts(), dtype=np.float64)  # N x C
            freq = counts.sum(0) / max(counts.sum(), 1.0)
            present = [np.flatnonzero(counts[:, c] >= min_pixels) for c in range(counts.shape[1])]
            classes = [c for c in range(counts.shape[1]) if freq[c] > 0 and len(present[c])]
            if not classes:
                raise ValueError("rare-class sampling: no class reaches rcs_min_pixels in any image")
            logits = (1.0 - freq[classes]) / temperature
            p = np.exp(logits - logits.max())
            self.rcs = (np.asarray(classes), p / p.sum(), present)
            if min_crop_ratio > 0:
                self.min_crop_pixels = min_pixels * min_crop_ratio
        self._perm_epoch, self._perm = -1, None

    def draw(self, k: int) -> tuple[int, int, int | None]:
        """(dataset index, epoch, the rare class sampled or None) of sample k."""
        epoch, pos = divmod(k, self.n)
        if self.rcs is not None:
            classes, probs, present = self.rcs
            rng = np.random.default_rng((self.seed, 7, k))
            c = classes[rng.choice(len(classes), p=probs)]
            return int(rng.choice(present[c])), epoch, int(c)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.seed, 11, epoch)).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[pos]), epoch, None

    def index(self, k: int) -> tuple[int, int]:
        index, epoch, _ = self.draw(k)
        return index, epoch

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, k: int) -> dict[str, Any]:
        index, epoch, rare_class = self.draw(k)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if rare_class is not None and self.min_crop_pixels is not None:
            return self.dataset.item(index, rare_class=rare_class, min_class_pixels=self.min_crop_pixels,
                                     sample=k)
        return self.dataset[index]


class _Range(torch.utils.data.Sampler):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        k = self.start
        while True:
            yield k
            k += 1


def _loader(dataset, batch_size: int, workers: int, start_sample: int, seed: int, pin_memory: bool = False):
    def init(worker_id: int) -> None:
        s = seed * 1000 + worker_id
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)

    # Its own generator: creating the iterator must not consume the global RNG (resume equality).
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=_Range(start_sample), num_workers=workers,
        worker_init_fn=init if workers else None, persistent_workers=False, drop_last=True,
        generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)


# ---------------------------------------------------------------------------------------------------
# optimisation

def poly_warmup(iterations: int, warmup: int, ratio: float, power: float) -> Callable[[int], float]:
    """Linear warm-up (from `ratio`) multiplied into a poly decay to 0 (the mmseg/DAFormer schedule)."""

    def factor(it: int) -> float:
        f = (1.0 - min(it, iterations) / iterations) ** power
        if warmup and it < warmup:
            f *= 1.0 - (1.0 - it / warmup) * (1.0 - ratio)
        return f

    return factor


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def norm_parameters(module: nn.Module) -> set[int]:
    """ids of the parameters of `module`'s normalisation layers (LayerNorm, BatchNorm, GroupNorm, ...; timm's
    LayerNorm2d is a LayerNorm). On timm's PVTv2 these are exactly the parameters whose names contain
    `norm`, the ones DAFormer's `paramwise_cfg` (custom_keys norm: decay_mult 0) matches on MiT."""
    return {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}


def build_optimizer(cfg: RunConfig, model: nn.Module, aux: nn.ModuleDict) -> torch.optim.Optimizer:
    groups = model.param_groups()
    o = cfg.optim
    param_groups = [
        {"name": "encoder", "params": list(groups["encoder"]), "lr": o.lr},
        {"name": "decoder", "params": list(groups["decoder"]), "lr": o.lr * o.head_lr_mult},
    ]
    if o.encoder_norm_decay_mult != 1.0:  # the encoder's norm parameters in a group of their own
        norms = norm_parameters(getattr(model, "encoder", model))
        encoder = param_groups[0]["params"]
        param_groups.insert(1, {"name": "encoder/norm", "params": [p for p in encoder if id(p) in norms],
                                "lr": o.lr, "weight_decay": o.weight_decay * o.encoder_norm_decay_mult})
        param_groups[0]["params"] = [p for p in encoder if id(p) not in norms]
    n_model_groups = len(param_groups)
    for name, task in aux.items():
        params = [p for p in task.parameters() if p.requires_grad]
        if params:
            param_groups.append({"name": f"aux/{name}", "params": params,
                                 "lr": o.lr * cfg.method.aux[name].lr_mult})
    counted = sum(len(g["params"]) for g in param_groups[:n_model_groups])
    if counted != len(list(model.parameters())):
        raise RuntimeError("model.param_groups() does not cover every parameter exactly once")
    # the fused kernel (CPU and CUDA): one pass over all parameters, ~4x faster than the loop
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                             fused=fused or None)


# ---------------------------------------------------------------------------------------------------
# the run

class Trainer:
    """Builds everything a run needs from its config; `run()` trains, evaluates and checkpoints."""

    def __init__(self, cfg: RunConfig, on_eval: OnEval | None = None, progress: bool | None = None,
                 on_log: OnLog | None = None) -> None:
        from harness.data import build_dataset
        from harness.data.io import DataError
        from harness.models import create_segmentor
        from methods import AUX_TASKS, HOSTS

        self.cfg, self.on_eval, self.progress, self.on_log = cfg, on_eval, progress, on_log
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # autocast dtype, GradScaler, cuDNN, pinned memory, eval batch: resolved for this device, then applied
        self.settings = runtime.settings_for(cfg, self.device)
        runtime.apply_settings(self.settings)
        seed_everything(cfg.seed)
        self.out = Path(cfg.output).resolve()

        for message in recipe_warnings(cfg):
            warnings.warn(message, RecipeWarning, stacklevel=2)
        m = cfg.model
        self.model = create_segmentor(m.arch, backbone=m.backbone, num_classes=NUM_CLASSES,
                                      pretrained=m.pretrained, **m.options).to(self.device)
        self.host = HOSTS.get(cfg.method.host)(cfg.method, self.model).to(self.device)
        self.aux = nn.ModuleDict({
            name: AUX_TASKS.get(name)(a.options, self.model, NUM_CLASSES)
            for name, a in cfg.method.aux.items()}).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.aux)
        s = cfg.schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_warmup(s.iterations, s.warmup, s.warmup_ratio, s.power))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.settings.grad_scaler)  # fp16 autocast only

        d = cfg.data
        source = build_dataset(d.source, crop=d.crop, flip=d.flip, seed=cfg.seed,
                               cat_max_ratio=d.source_cat_max_ratio)
        target = build_dataset(d.target, crop=d.crop, flip=d.flip, seed=cfg.seed + 1,
                               pseudo_margins=cfg.method.pseudo_image_margins)  # items carry pseudo_valid
        rcs = (d.rcs_temperature, d.rcs_min_pixels) if d.rare_class_sampling else None
        self.val = build_dataset(d.val, resize_label=not cfg.eval.full_resolution_labels,
                                 label_size=cfg.eval.label_size)
        for split, ds in (("source", source), ("target", target), ("val", self.val)):
            if len(ds) == 0:
                raise DataError(f"data.{split}: {ds_name(getattr(d, split))} holds no images")
        source.check_crop("data.source")
        target.check_crop("data.target")
        self.source_stream = SampleStream(source, cfg.seed, rcs, min_crop_ratio=d.rcs_min_crop_ratio)
        self.target_stream = SampleStream(target, cfg.seed + 1)
        sel = cfg.selection  # label-free selection criteria: on the first target-train images, whole
        self.criteria_set = (torch.utils.data.Subset(build_dataset(d.target), range(min(sel.images, len(target))))
                             if sel.images and sel.criteria else None)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self.iteration = 0
        self.history: list[dict[str, float]] = []

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "host": self.host.state_dict(),
            "aux": self.aux.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        free = ("output", "name", "device", "threads", "log_interval", "checkpoint_interval",
                "cudnn_benchmark", "deterministic",  # kernel choice: a run may resume with other kernels
                "checkpoint_keep", "selection")  # what is kept and logged beside the run, not what it computes
        saved = {k: v for k, v in without_later_defaults(state["config"]).items() if k not in free}
        mine = {k: v for k, v in without_later_defaults(self.cfg.to_dict()).items() if k not in free}
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise ValueError(f"{source}: was written by a run with a different config (differs in: "
                             f"{', '.join(diff)}); resume with the same config")
        self.model.load_state_dict(state["model"])
        self.host.load_state_dict(state["host"])
        self.aux.load_state_dict(state["aux"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["scaler"]:  # empty: written without fp16 (CPU, bf16)
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))

    def save(self) -> Path:
        return ckpt.save(self.state_dict(), self.out / "checkpoint")

    # -- one step ------------------------------------------------------------------------------------
    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.device, non_blocking=self.settings.non_blocking).float() - self.mean) / self.std

    def step(self, src: dict[str, Any], tgt: dict[str, Any], sums: dict[str, float]) -> None:
        from methods.base import StepContext

        it = self.iteration

        pending: list[torch.Tensor] = []  # losses sharing a graph a task reuses: one backward at the end

        def backward(name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss '{name}' is {value} at iteration {it}")
            sums[name] += value
            if retain_graph and ctx.reuse:  # the graph is shared with a later loss: back-propagate the
                pending.append(loss)        # sum once, so the shared encoder pass is traversed once
                return
            self.scaler.scale(loss).backward(retain_graph=retain_graph)

        ctx = StepContext(
            iteration=it,
            source_image=self._normalise(src["image"]),
            source_label=src["label"].to(self.device, non_blocking=self.settings.non_blocking),
            target_image=self._normalise(tgt["image"]),
            target_label=tgt["label"].to(self.device, non_blocking=self.settings.non_blocking),
            student=self.model, mean=self.mean, std=self.std)
        if "pseudo_valid" in tgt:  # method.pseudo_image_margins: the image's margins, cut with the crop
            ctx.pseudo_valid = tgt["pseudo_valid"].to(self.device, non_blocking=self.settings.non_blocking)
        aux = self.cfg.method.aux  # the host keeps the encoder passes this step's tasks reuse (methods/base.py)
        ctx.reuse = frozenset().union(*(t.reuses for n, t in self.aux.items()
                                        if it >= aux[n].start_iter and aux[n].weight != 0))
        self.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(self.settings):
            self.host.step(ctx, backward)
            for name, task in self.aux.items():
                spec = self.cfg.method.aux[name]
                if it < spec.start_iter or spec.weight == 0:
                    continue
                for key, loss in task(ctx).items():
                    backward(f"{name}/{key}", spec.weight * loss, retain_graph=bool(ctx.reuse))
            if pending:
                self.scaler.scale(torch.stack([p.float() for p in pending]).sum()).backward()
                pending.clear()
            for key in ctx.reuse:  # the last task is done: free the host's retained graphs
                ctx.extras.pop(key, None)
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.host.after_optimizer_step(it)
        for task in self.aux.values():
            task.after_optimizer_step(ctx)
        for key, value in ctx.stats.items():
            sums[f"stat/{key}"] += value

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        from harness.engine.evaluation import evaluate, val_loader

        e, s = self.cfg.eval, self.settings
        loader = val_loader(self.val, s.eval_batch_size, self.cfg.data.workers, s.pin_memory)
        was_training = self.model.training
        self.model.eval()
        try:
            res = evaluate(self.model, loader, self.device, mode=e.mode, crop=e.crop, stride=e.stride,
                           mean=MEAN, std=STD, max_images=e.max_images, autocast_dtype=s.autocast_dtype)
        finally:
            self.model.train(was_training)
        out = {"target_miou": 100 * res["miou"], "target_miou16": 100 * res["miou16"],
               "target_miou13": 100 * res["miou13"], "pixel_acc": 100 * res["pixel_acc"]}
        for name, iou in zip(CLASSES, res["iou"]):
            out[metric_key(name)] = 100 * float(iou)  # NaN: class absent from GT and prediction
        if self.criteria_set is not None:  # `criterion/<name>`, on target-train images without their labels
            from harness.engine import criteria

            out.update(criteria.compute(
                self.model, torch.utils.data.DataLoader(  # its own generator: the global RNG stays untouched
                    self.criteria_set, batch_size=1, generator=torch.Generator()), self.device,
                self.cfg.selection.criteria, teacher=getattr(self.host, "teacher", None), mode=e.mode,
                crop=e.crop, stride=e.stride, mean=MEAN, std=STD))
        return out

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        runtime.record(self.settings, self.device, self.out / "config.yaml")
        total = cfg.schedule.iterations
        bs = cfg.data.batch_size
        pin = self.settings.pin_memory
        src_iter = iter(_loader(self.source_stream, bs, cfg.data.workers, self.iteration * bs, cfg.seed, pin))
        tgt_iter = iter(_loader(self.target_stream, bs, cfg.data.workers, self.iteration * bs,
                                cfg.seed + 1, pin))
        self.model.train()
        sums: dict[str, float] = defaultdict(float)  # since the previous evaluation
        steps, t_start = 0, time.perf_counter()
        window: dict[str, float] = defaultdict(float)  # since the previous log (on_log)
        w_steps, w_time, w_start = 0, 0.0, t_start  # w_time: the window's time before an evaluation
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = tqdm(total=total, initial=self.iteration, desc=cfg.name, unit="it", dynamic_ncols=True,
                   disable=self.progress is False or (self.progress is None and not sys.stderr.isatty()))
        # without a terminal (a log file, a Ray trial): a plain line every tenth of the schedule
        plain_every = max(1, total // 10) if bar.disable and self.progress is None else 0
        metrics: dict[str, float] = self.history[-1] if self.history else {}
        try:
            while self.iteration < total:
                src, tgt = next(src_iter), next(tgt_iter)
                step_sums: dict[str, float] = defaultdict(float)
                self.step(src, tgt, step_sums)
                for k, v in step_sums.items():  # one value per name a step: sums as if added directly
                    sums[k] += v
                    window[k] += v
                self.iteration += 1
                steps += 1
                w_steps += 1
                bar.update(1)
                plain = plain_every and self.iteration % plain_every == 0
                if steps % cfg.log_interval == 0 or self.iteration == total or plain:
                    elapsed = time.perf_counter() - t_start
                    loss = sum(v for k, v in sums.items() if not k.startswith("stat/")) / steps
                    img_s = 2 * bs * steps / elapsed
                    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{img_s:.1f}")
                    if plain:
                        print(f"[{cfg.name}] {self.iteration}/{total} ({100 * self.iteration // total}%) "
                              f"loss {loss:.3f}, {img_s:.1f} img/s", file=sys.stderr, flush=True)
                if self.on_log is not None and (self.iteration % cfg.log_interval == 0 or self.iteration == total):
                    now = time.perf_counter()
                    logged = self._means(window, w_steps, w_time + now - w_start)
                    window.clear()
                    w_steps, w_time, w_start = 0, 0.0, now  # the log's own cost counts in the next window
                    self.on_log(self.iteration, logged)
                if self.iteration % cfg.eval.interval == 0 or self.iteration == total:
                    elapsed = time.perf_counter() - t_start
                    w_time += time.perf_counter() - w_start  # evaluation time is no training time
                    metrics = self.evaluate()
                    metrics.update({(k if k.startswith("stat/") else f"loss/{k}"): v / steps
                                    for k, v in sums.items()})
                    metrics.update({
                        "iteration": float(self.iteration),
                        "step_time": elapsed / steps,
                        "throughput": 2 * bs * steps / elapsed,
                        "peak_mem_mb": self._peak_mem_mb(),
                        "lr": self.optimizer.param_groups[0]["lr"],
                    })
                    self.history.append(metrics)
                    if (self.iteration == total or cfg.checkpoint_interval is None
                            or self.iteration % cfg.checkpoint_interval == 0):
                        path = self.save()
                    else:
                        path = self.out / "checkpoint" / ckpt.FILENAME
                    ckpt.keep(self.cfg.to_dict(), self.iteration, self.model, metrics, path.parent, cfg.checkpoint_keep)
                    bar.write(f"[{cfg.name}] iteration {self.iteration}/{total}: "
                              f"target mIoU {metrics['target_miou']:.2f}")
                    if self.on_eval is not None:
                        self.on_eval(self.iteration, metrics, path.parent)
                    sums.clear()
                    steps, t_start = 0, time.perf_counter()
                    w_start = t_start
        finally:
            bar.close()
        return metrics

    def _means(self, sums: dict[str, float], steps: int, elapsed: float) -> dict[str, float]:
        """What `on_log` receives: `loss/<name>` and `stat/<name>` means over the window's `steps`
        steps, `throughput` (images/s, source + target), `step_time` (s) and the encoder's `lr`."""
        out = {(k if k.startswith("stat/") else f"loss/{k}"): v / steps for k, v in sums.items()}
        out.update({"step_time": elapsed / steps, "throughput": 2 * self.cfg.data.batch_size * steps / elapsed,
                    "lr": self.optimizer.param_groups[0]["lr"]})
        return out

    def _peak_mem_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(cfg: RunConfig, on_eval: OnEval | None = None, resume: str | Path | None = None,
          progress: bool | None = None, on_log: OnLog | None = None) -> dict[str, float]:
    """Train one run; return the final evaluation's metrics. `resume`: a checkpoint file or folder.
    `on_log(iteration, means)`: every `cfg.log_interval` iterations (`Trainer.run`)."""
    state = None
    if resume is not None:  # read (and refuse) the checkpoint before anything is built or written
        try:
            state = ckpt.load(resume)
        except ValueError as e:
            raise UsageError(f"--resume: {e}") from None
        if not isinstance(state, dict) or not {"config", "model", "iteration"} <= set(state):
            raise UsageError(f"--resume: {ckpt.resolve(resume)}: not a udabench training checkpoint "
                             "(expected a dict with 'config', 'model' and 'iteration')")
        if "optimizer" not in state:  # an evaluation's kept weights (checkpoint_keep): deployable, not resumable
            raise UsageError(f"--resume: {ckpt.resolve(resume)}: the weights kept at one evaluation "
                             f"(checkpoint_keep), without optimiser state; resume from {ckpt.FILENAME}")
    trainer = Trainer(cfg, on_eval=on_eval, progress=progress, on_log=on_log)
    if state is not None:
        try:
            trainer.load_state_dict(state, str(ckpt.resolve(resume)))
        except ValueError as e:
            raise UsageError(str(e)) from None
    return trainer.run()


def ds_name(ds_cfg) -> str:
    """'synthetic target/val at datasets/synthetic': a dataset config in words, for messages."""
    what = "/".join(str(v) for v in (ds_cfg.domain, ds_cfg.split) if v)
    return f"{ds_cfg.name} {what} at {ds_cfg.root}"

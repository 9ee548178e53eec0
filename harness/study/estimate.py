"""How long will a study take here? Measured, not guessed: `udabench study estimate`.

A study's run time is dominated by its trials' training steps, and a step's cost depends on the model,
the host method and the auxiliary tasks, not on the seed or on a loss weight. So the trials are grouped
by what sets their cost (`cost_key`), and for one trial of each group a real `Trainer` is built (same
config, same data) and timed on this machine: start-up (model and data), `steps` training steps after
`warmup` untimed ones, and one evaluation. A trial's estimate is

    start-up + iterations x step time + evaluations x (evaluation + checkpoint) time,

and the study's wall time is the trials placed in file order (or the costliest first, as
`study run --order longest` starts them) on `concurrency` slots, each trial starting when a slot frees
(as Ray Tune schedules them). Trials running side by side share memory bandwidth, so
the wall time is multiplied by `contention` (1.0 = none). Searches: `num_samples` trials at the middle
of every range. Measurements are shared between studies and scales with the same cost key (an
evaluation is timed per image, so scales that evaluate more images reuse it).
"""

from __future__ import annotations

import heapq
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.study.trials import Study, Trial

# Wall time of trials running 2 at a time on 2 cores against the estimate from single-process timings:
# studies/gap.yaml at the cpu scale took 49 min 44 s (first run start to last run end in MLflow;
# `dvc repro study@gap`, commit 09cefa0) where the contention-free estimate said 43 min 31 s.
CONTENTION = 1.14


@dataclass
class GroupCost:
    """The measured cost of one group of trials (same model, host and auxiliary tasks)."""

    key: str
    trials: int
    startup_s: float
    step_s: float
    eval_s: float  # an evaluation and the checkpoint written after it
    iterations: int
    evaluations: int

    @property
    def trial_s(self) -> float:
        return self.startup_s + self.work_s

    @property
    def work_s(self) -> float:
        """The trial without start-up: what ranks trials for `--order longest` (the first group timed
        pays one-time imports in its start-up, and the steps dominate a real trial)."""
        return self.iterations * self.step_s + self.evaluations * self.eval_s


@dataclass
class Estimate:
    study: str
    scale: str
    trials: int
    concurrency: int
    contention: float
    groups: list[GroupCost] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # each trial's group, in the order they start
    measured_in_s: float = 0.0

    @property
    def cpu_s(self) -> float:
        return sum(g.trials * g.trial_s for g in self.groups)

    def wall_s(self) -> float:
        """The trials in `order` on `concurrency` slots (each starts when a slot frees), x contention."""
        durations = [self.groups[i].trial_s for i in self.order]
        slots = [0.0] * max(1, min(self.concurrency, len(durations) or 1))
        heapq.heapify(slots)
        end = 0.0
        for d in durations:
            start = heapq.heappop(slots)
            end = max(end, start + d)
            heapq.heappush(slots, start + d)
        return end * self.contention

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k not in ("groups", "order")},
                "groups": [{**asdict(g), "trial_s": g.trial_s} for g in self.groups],
                "cpu_s": self.cpu_s, "wall_s": self.wall_s()}


def cost_key(cfg: RunConfig) -> str:
    """What sets a step's cost: model, data sizes, host, and the auxiliary tasks with their options
    (a mask ratio or a Rebuilder preset change the work); not seeds, weights or learning rates."""
    d = cfg.to_dict()
    m = cfg.method
    data = {k: d["data"][k] for k in ("crop", "batch_size")}
    data.update({s: d["data"][s].get("resize") for s in ("source", "target", "val")})
    key = {"model": d["model"], "data": data, "host": m.host,
           "aux": {name: a.options for name, a in sorted(m.aux.items())}}
    return json.dumps(key, sort_keys=True, default=str)


def describe(cfg: RunConfig) -> str:
    aux = "+".join(sorted(cfg.method.aux)) or "none"
    return f"{cfg.model.arch}/{cfg.model.backbone} {cfg.method.host} aux={aux}"


def study_trials(study: Study) -> list[Trial]:
    """The grid's trials, or a search's `num_samples` trials at the middle of every range."""
    if not study.is_search:
        return study.trials()
    search = study.spec.search
    mid: dict[str, Any] = {}
    for name, p in search.params.items():
        if p.type == "uniform":
            mid[name] = (p.low + p.high) / 2
        elif p.type == "loguniform":
            mid[name] = math.sqrt(p.low * p.high)
        elif p.type == "randint":
            mid[name] = int((p.low + p.high) // 2)
        else:
            mid[name] = list(p.values or [])[0]
    cfg = study.resolve(mid)
    return [Trial(i, mid, cfg) for i in range(search.num_samples)]


@dataclass
class Measurement:
    """What one real Trainer cost here: start-up, a training step, an evaluated image, a checkpoint."""

    startup_s: float
    step_s: float
    eval_image_s: float
    save_s: float


def measure(cfg: RunConfig, steps: int = 5, warmup: int = 2) -> Measurement:
    """Build a Trainer for `cfg`, time `steps` training steps (median, after `warmup`), one evaluation
    (per image) and one checkpoint, in a temporary folder."""
    import torch

    from harness.engine.training import Trainer, _loader

    with tempfile.TemporaryDirectory(prefix="udabench-estimate-") as tmp:
        cfg = cfg.model_copy(deep=True)
        cfg.output = tmp
        cfg.eval.max_images = min(cfg.eval.max_images or 20, 20)  # per-image cost from 20 images
        t0 = time.perf_counter()
        trainer = Trainer(cfg, progress=False)
        bs = cfg.data.batch_size
        src = iter(_loader(trainer.source_stream, bs, cfg.data.workers, 0, cfg.seed))
        tgt = iter(_loader(trainer.target_stream, bs, cfg.data.workers, 0, cfg.seed + 1))
        startup = time.perf_counter() - t0
        sums: dict[str, float] = defaultdict(float)
        trainer.model.train()
        times = []
        for i in range(warmup + steps):
            t = time.perf_counter()
            trainer.step(next(src), next(tgt), sums)
            trainer.iteration += 1
            if i >= warmup:
                times.append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            trainer.evaluate()
        per_image = (time.perf_counter() - t) / min(cfg.eval.max_images, len(trainer.val))
        t = time.perf_counter()
        trainer.save()
        save = time.perf_counter() - t
    times.sort()
    return Measurement(startup, times[len(times) // 2], per_image, save)


def _val_images(cfg: RunConfig) -> int:
    from harness.data import build_dataset

    n = len(build_dataset(cfg.data.val))
    return min(n, cfg.eval.max_images) if cfg.eval.max_images else n


def estimate(study: Study, root: str | Path = ".", steps: int = 5, warmup: int = 2,
             concurrency: int | None = None, contention: float = CONTENTION,
             threads: int | None = None, progress=print,
             cache: dict[str, Measurement] | None = None, longest: bool = False) -> Estimate:
    """Measure one trial per cost group of `study` here (or take it from `cache`, shared between
    studies and scales) and estimate the study's run time: trials in file order, or with `longest`
    the costliest first (`study run --order longest`)."""
    cache = {} if cache is None else cache
    trials = study_trials(study)
    cpu_per_trial = study.resources()["cpu"] or 1
    if concurrency is None:
        slots = max(1, int((os.cpu_count() or 1) // cpu_per_trial))
        concurrency = min(slots, study.spec.max_concurrent or slots)
    threads = threads or max(1, int(cpu_per_trial))
    out = Estimate(study.name, study.scale, len(trials), concurrency, contention)
    began = time.perf_counter()
    costs = group_costs(trials, root, threads, steps, warmup, cache,
                        lambda n, total, what: progress(f"[{study.name} {study.scale} {n}/{total}] "
                                                        f"timing {what} ..."))
    out.measured_in_s = time.perf_counter() - began
    index = {key: i for i, key in enumerate(costs)}
    out.groups = list(costs.values())
    out.order = [index[cost_key(t.config)] for t in trials]
    if longest:  # as `study run --order longest` starts them
        out.order.sort(key=lambda g: -out.groups[g].work_s)
    return out


def group_costs(trials: list[Trial], root: str | Path, threads: int, steps: int, warmup: int,
                cache: dict[str, Measurement], progress) -> dict[str, GroupCost]:
    """The cost of each cost group of `trials` (by `cost_key`, in file order): one trial of the group
    timed here, unless `cache` has it. `progress(n, groups, description)` before each timing."""
    import torch

    from harness.study.trials import absolutize

    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(cost_key(t.config), []).append(t)
    out: dict[str, GroupCost] = {}
    saved_threads = torch.get_num_threads()
    try:
        for n, (key, members) in enumerate(groups.items(), 1):
            cfg = absolutize(members[0].config, root, Path("unused"), threads)
            if key not in cache:
                torch.set_num_threads(cfg.threads or threads)
                progress(n, len(groups), f"{describe(cfg)} ({len(members)} trial(s))")
                cache[key] = measure(cfg, steps, warmup)
            m = cache[key]
            it = cfg.schedule.iterations
            evals = len(set(range(cfg.eval.interval, it + 1, cfg.eval.interval)) | {it})
            out[key] = GroupCost(describe(cfg), len(members), m.startup_s, m.step_s,
                                 m.eval_image_s * _val_images(cfg) + m.save_s, it, evals)
    finally:
        torch.set_num_threads(saved_threads)
    return out


def longest_first(trials: list[Trial], root: str | Path = ".", threads: int = 1, steps: int = 3,
                  warmup: int = 1, progress=print) -> list[Trial]:
    """`trials` with the costliest first (longest-processing-time-first scheduling), ranked by
    `GroupCost.work_s` of one trial per cost group timed here, with fewer steps than `estimate` (the
    order needs a ranking, not a precise time); file order among equal costs. In file order, a study
    whose long trials come last (the auxiliary tasks after the plain host) leaves one slot idle while
    the last trial runs alone."""
    if len({cost_key(t.config) for t in trials}) < 2:
        return list(trials)
    costs = group_costs(trials, root, threads, steps, warmup, {},
                        lambda n, total, what: progress(f"udabench: ordering trials longest first: "
                                                        f"timing {n}/{total} {what}"))
    return sorted(trials, key=lambda t: -costs[cost_key(t.config)].work_s)


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")

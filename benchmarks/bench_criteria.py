"""What the label-free selection criteria (harness/engine/criteria.py) cost at an evaluation, against the
evaluation itself, and how large the weights kept per evaluation (`checkpoint_keep`) are.

Builds a real Trainer of the `cpu` scale (DACS on the synthetic benchmark under datasets/synthetic: 200
validation images, 128x64) for each architecture, then times, interleaved (A, B, A, B, ...) so that
background load hits both: A = the evaluation on the validation set without the criteria, B = the criteria
alone on the first `selection.images` target training images. Also writes one kept weights file
(`checkpoint_keep`) and one full training checkpoint (after one step: with the optimiser's state) and reports
their sizes. One torch thread, as a study trial runs.

    .venv/bin/python benchmarks/bench_criteria.py --repeats 3

prints one JSON object per architecture (median seconds, the ratio, file sizes in MB) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def criteria_only(trainer, subset) -> dict[str, float]:
    """The criteria of the trainer's student (and teacher) on `subset`, as `Trainer.evaluate` computes them."""
    import torch

    from harness.engine import criteria
    from harness.engine.training import MEAN, STD

    e = trainer.cfg.eval
    loader = torch.utils.data.DataLoader(subset, batch_size=1, generator=torch.Generator())
    return criteria.compute(trainer.model, loader, trainer.device, trainer.cfg.selection.criteria,
                            teacher=getattr(trainer.host, "teacher", None), mode=e.mode, crop=e.crop,
                            stride=e.stride, mean=MEAN, std=STD)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--archs", nargs="+", default=["deeplabv2", "daformer"])
    p.add_argument("--images", type=int, default=None, help="selection.images (default: the config's)")
    args = p.parse_args(argv)


    from harness.engine import checkpoint as ckpt
    from harness.engine.resolve import load_config
    from harness.engine.training import Trainer, _loader
    from harness.env import offline
    from harness.scales import scale_overlay

    offline()
    os.chdir(ROOT)
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            extra = [f"selection.images={args.images}"] if args.images is not None else []
            cfg = load_config(None, [f"model.arch={arch}", "method.host=dacs", f"output={tmp}/run", "threads=1",
                                     *extra], extra=scale_overlay("cpu", arch))
            trainer = Trainer(cfg, progress=False)
            subset, trainer.criteria_set = trainer.criteria_set, None

            evals, crits = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                trainer.evaluate()
                evals.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                values = criteria_only(trainer, subset)
                crits.append(time.perf_counter() - t0)
            kept = ckpt.keep(cfg.to_dict(), 1, trainer.model, {}, Path(tmp) / "keep", "all")
            bs = cfg.data.batch_size  # one training step, so the full checkpoint holds the optimiser's state
            trainer.step(next(iter(_loader(trainer.source_stream, bs, 0, 0, cfg.seed))),
                         next(iter(_loader(trainer.target_stream, bs, 0, 0, cfg.seed + 1))), defaultdict(float))
            full = trainer.save()
            print(json.dumps({
                "arch": f"{arch}/{cfg.model.backbone}", "val_images": len(trainer.val),
                "criteria_images": len(subset), "criteria": sorted(values),
                "evaluation_s": round(statistics.median(evals), 3), "criteria_s": round(statistics.median(crits), 3),
                "criteria_over_evaluation": round(statistics.median(crits) / statistics.median(evals), 3),
                "evaluation_s_all": [round(t, 3) for t in evals], "criteria_s_all": [round(t, 3) for t in crits],
                "kept_weights_mb": round(kept.stat().st_size / 1e6, 1),
                "full_checkpoint_mb": round(full.stat().st_size / 1e6, 1),
                "loadavg": open("/proc/loadavg").read().split()[:3]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

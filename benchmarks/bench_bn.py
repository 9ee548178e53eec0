"""BatchNorm statistics and the domain gap: how much of a checkpoint's target error is normalisation?

Loads a run's checkpoint (the student, or with `--teacher` a DACS run's EMA teacher) and scores it on
the run's target validation split twice: with the running statistics it learnt in training, then with
every BatchNorm layer's statistics re-estimated on target training images (AdaBN; Li et al. 2016). A
large difference means the model's BatchNorm statistics belong to the source domain, which is why the
small scales build DeepLab-v2 with GroupNorm (harness/scales.py). The checkpoint is not modified.

    udabench train studies/configs/deeplabv2.yaml --scale cpu --set method.host=source_only \\
        --set model.options.norm=batch --output runs/bn_source_only
    .venv/bin/python benchmarks/bench_bn.py runs/bn_source_only/checkpoint

prints a Markdown table (mIoU and the IoU of the large classes, both ways).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ("road", "building", "vegetation", "sky", "car")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a run's checkpoint file or folder")
    p.add_argument("--teacher", action="store_true", help="score the DACS EMA teacher, not the student")
    p.add_argument("--images", type=int, default=200, help="target training images for the statistics")
    args = p.parse_args(argv)

    import torch

    from harness.config import RunConfig
    from harness.engine import checkpoint as ckpt
    from harness.engine.training import Trainer
    from harness.env import offline

    offline()
    torch.set_num_threads(1)
    state = ckpt.load(args.checkpoint)
    cfg = RunConfig.model_validate(state["config"]).model_copy(update={"output": "/nonexistent"})
    trainer = Trainer(cfg, progress=False)
    weights = state["model"]
    if args.teacher:
        weights = {k.removeprefix("teacher."): v for k, v in state["host"].items() if k.startswith("teacher.")}
        if not weights:
            p.error(f"{args.checkpoint}: no EMA teacher in this checkpoint (host '{cfg.method.host}')")
    model = trainer.model
    model.load_state_dict(weights)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        p.error(f"{args.checkpoint}: the model has no BatchNorm layers (model.options.norm: group?)")
    running = trainer.evaluate()

    for m in norms:  # AdaBN: cumulative average of target batch statistics
        m.reset_running_stats()
        m.momentum = None
    model.train()
    bs = cfg.data.batch_size
    with torch.no_grad():
        for k in range(0, args.images - bs + 1, bs):
            batch = [trainer.target_stream[k + i]["image"] for i in range(bs)]
            model(trainer._normalise(torch.stack(batch)))
    adapted = trainer.evaluate()

    print(f"{args.checkpoint} ({'teacher' if args.teacher else 'student'}; {cfg.model.arch}/"
          f"{cfg.model.backbone}, host {cfg.method.host}); statistics from {args.images} target images\n")
    print("| BatchNorm statistics | mIoU | " + " | ".join(CLASSES) + " |")
    print("|---|---|" + "---|" * len(CLASSES))
    for name, m in (("running (as trained)", running), ("target (AdaBN)", adapted)):
        ious = " | ".join(f"{m['iou/' + c]:.1f}" for c in CLASSES)
        print(f"| {name} | {m['target_miou']:.1f} | {ious} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

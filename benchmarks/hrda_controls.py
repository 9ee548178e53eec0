"""HRDA's controls at the cpu scale: the runs and the diagnostic behind README "HRDA at cpu".

Two subcommands:

- `down OUT [--set KEY=VALUE ...]`: trains, through udabench's engine and on HRDA's cpu data (the 256x128
  images, whole crops, scored on the 128x64 labels), a DAFormer whose encoder reads its input resized by
  0.5 (bilinear, as HRDA's context view) and whose logits are resized to the input: HRDA's context view
  alone, without HRDA's code (no detail pass, no fusion, no second view through the head's BatchNorm).
  The control against `--set model.arch=hrda --set model.options.fixed_attention=0.0 --set
  model.options.detail_loss_weight=0` (HRDA with its detail view switched off in the loss and fusion).
- `bn CHECKPOINT [--val N] [--images K]`: scores an HRDA checkpoint on the first N target validation
  images as trained, then with the head's BatchNorm statistics re-estimated (cumulative average) on K
  source images' context views, then on K source detail crops (one random crop each). The running
  statistics of a training run average both views; the difference says how much that mixture costs the
  context view. The checkpoint is not modified.

    .venv/bin/python benchmarks/hrda_controls.py down runs/hrda_down
    .venv/bin/python benchmarks/hrda_controls.py bn runs/hrda_ctx/checkpoint --val 100 --images 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# HRDA's data at the cpu scale (harness/scales.py _SMALL_ARCHS_HR), for the `down` control
HRDA_DATA = ["data.source.resize=[256,128]", "data.target.resize=[256,128]", "data.val.resize=[256,128]",
             "data.crop=[128,256]", "data.rcs_min_pixels=1500", "eval.label_size=[128,64]"]


def down(out: str, extra: list[str]) -> int:
    import torch.nn.functional as F

    from harness.cli import main as cli
    from harness.models import _lazy, register_model
    from harness.models.daformer import DAFormer

    class HalfInputDAFormer(DAFormer):
        arch = "half_input_daformer"

        def encode(self, x):
            return super().encode(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))

    globals()["HalfInputDAFormer"] = HalfInputDAFormer
    register_model(HalfInputDAFormer.arch)(_lazy(f"{__name__}:HalfInputDAFormer",
                                                  "DAFormer reading its input at half resolution"))
    sets = ["model.arch=half_input_daformer", "model.backbone=pvt_v2_b0", "model.options.embed_dim=64",
            "data.rare_class_sampling=true", *HRDA_DATA, *extra]
    return cli(["train", str(ROOT / "studies/configs/base.yaml"), "--scale", "cpu", "--output", out,
                *[a for s in sets for a in ("--set", s)]])


def bn(checkpoint: str, val_images: int, images: int) -> int:
    import torch
    from torch import nn

    from harness.cli.eval import load_model
    from harness.data import build_dataset
    from harness.engine.evaluation import MEAN, STD, evaluate

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, cfg = load_model(checkpoint)
    if not hasattr(model, "detail_windows"):
        raise SystemExit(f"{checkpoint}: not an HRDA checkpoint (model.arch {cfg.model.arch})")
    val = build_dataset(cfg.data.val, resize_label=not cfg.eval.full_resolution_labels,
                        label_size=cfg.eval.label_size)
    loader = torch.utils.data.DataLoader(val, batch_size=1)
    source = build_dataset(cfg.data.source)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def score() -> float:
        model.eval()
        r = evaluate(model, loader, "cpu", mode=cfg.eval.mode, crop=cfg.eval.crop, stride=cfg.eval.stride,
                     mean=MEAN, std=STD, max_images=val_images)
        return 100 * r["miou"]

    def reestimate(view: str) -> None:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        with torch.no_grad():
            for i in range(min(images, len(source))):
                x = (source[i]["image"].float()[None] - mean) / std
                if view == "context":
                    model.context(model.view_features(x))
                else:
                    y1, y2, x1, x2 = model.detail_box(*x.shape[-2:])
                    model.decode(model.encode(x[:, :, y1:y2, x1:x2]))

    rows = [("as trained (running statistics of both views)", score())]
    for view in ("context", "detail"):
        reestimate(view)
        rows.append((f"re-estimated on {images} source {view} {'views' if view == 'context' else 'crops'}",
                     score()))
    print(f"| BatchNorm statistics ({len(norms)} layers) | target mIoU (%), first {val_images} images |")
    print("|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.2f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("down", help="train the half-input DAFormer control on HRDA's cpu data")
    d.add_argument("out", help="output folder of the run")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    b = sub.add_parser("bn", help="an HRDA checkpoint with BatchNorm statistics re-estimated per view")
    b.add_argument("checkpoint", help="a run's checkpoint file or folder")
    b.add_argument("--val", type=int, default=100, help="target validation images scored")
    b.add_argument("--images", type=int, default=64, help="source images for the statistics")
    args = p.parse_args(argv)
    if args.cmd == "down":
        return down(args.out, args.set)
    return bn(args.checkpoint, args.val, args.images)


if __name__ == "__main__":
    sys.exit(main())

"""`udabench eval CHECKPOINT`: the evaluation protocol on a checkpoint (per-class IoU, mIoU 19/16/13,
pixel accuracy). Heavy imports happen inside the command, so `udabench --help` stays fast."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="evaluate a checkpoint: per-class IoU, mIoU (19/16/13), pixel accuracy",
        description="Evaluate the model (student) of a checkpoint on a validation set and print a "
                    "per-class IoU table. --data is a dataset config YAML, a run config YAML (its "
                    "data.val is used), or a spec 'name=cityscapes,root=datasets/cityscapes,split=val' "
                    "with DatasetConfig fields; default: the checkpoint's own data.val. Inference "
                    "settings default to the checkpoint's eval section. Values are in percent.")
    e.add_argument("checkpoint", help="checkpoint file, or a run folder holding checkpoint.pt")
    e.add_argument("--data", help="dataset config YAML, run config YAML, or key=value[,key=value] spec")
    e.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the results as JSON")
    e.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: the checkpoint's)")
    e.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    e.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride")
    e.add_argument("--max-images", type=int, help="evaluate only the first N images")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    e.add_argument("--workers", type=int, default=0, help="data loader worker processes (default: 0)")
    e.set_defaults(func=run_eval)


_SPEC_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w]*\s*=)")  # commas that start the next key=value


def dataset_config(spec: str | None, default: Any) -> Any:
    """A DatasetConfig from --data (see the command's help); `default` when spec is None."""
    from pydantic import ValidationError

    from harness.config import (
        ConfigError,
        DatasetConfig,
        RunConfig,
        format_validation_error,
        load_raw,
        parse_override,
    )
    from harness.engine.resolve import load_config
    from harness.errors import UsageError

    if spec is None:
        return default
    path = Path(spec)
    if path.is_file():
        raw = load_raw(path)
        if set(raw) & (set(RunConfig.model_fields) - set(DatasetConfig.model_fields)):
            return load_config(path).data.val
        source = str(path)
    elif "=" in spec:
        raw = {}
        for item in _SPEC_SPLIT.split(spec):
            key, _, value = item.partition("=")
            raw[key.strip()] = parse_override(f"v={value}")[1] if value.strip() else None
        source = f"--data '{spec}'"
    else:
        raise UsageError(f"--data '{spec}': not a file, and not a key=value spec "
                         "(e.g. name=cityscapes,root=datasets/cityscapes,split=val)")
    try:
        return DatasetConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, DatasetConfig)) from None


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str | Path):
    """The evaluated network of a checkpoint (built from its config, student weights loaded strictly)
    and its RunConfig."""
    from harness.engine import checkpoint as ckpt
    from harness.engine.resolve import validate
    from harness.errors import UsageError
    from harness.labels import NUM_CLASSES
    from harness.models import create_segmentor

    file = ckpt.resolve(path)
    try:
        state = ckpt.load(file)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not isinstance(state, dict) or not {"config", "model"} <= set(state):
        raise UsageError(f"{file}: not a udabench checkpoint (expected a dict with 'config' and 'model')")
    cfg = validate(state["config"], source=f"{file} (config)")
    m = cfg.model
    model = create_segmentor(m.arch, backbone=m.backbone, num_classes=NUM_CLASSES, pretrained=None,
                             **m.options)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise UsageError(f"{file}: model weights do not match {m.arch}/{m.backbone}: {' '.join(first)}") from None
    return model, cfg


def format_table(result: dict[str, Any]) -> str:
    """Per-class IoU table and the means, in percent ('-' for a class absent from GT and prediction)."""
    import math

    from harness.labels import CLASSES, SYNTHIA13, SYNTHIA16

    def pct(v: float) -> str:
        return "-" if math.isnan(v) else f"{100 * v:6.2f}"

    width = max(len(c) for c in CLASSES)
    lines = [f"{'class':<{width}}  {'IoU':>6}  16  13"]
    for i, (name, iou) in enumerate(zip(CLASSES, result["iou"])):
        lines.append(f"{name:<{width}}  {pct(iou):>6}  {'x' if i in SYNTHIA16 else ' ':>2}  "
                     f"{'x' if i in SYNTHIA13 else ' ':>2}")
    lines.append("-" * (width + 16))
    for key, label in (("miou", "mIoU (19)"), ("miou16", "mIoU16"), ("miou13", "mIoU13"),
                       ("pixel_acc", "pixel acc")):
        lines.append(f"{label:<{width}}  {pct(result[key]):>6}")
    lines.append("(x: counted in mIoU16 / mIoU13; '-': class absent from ground truth and prediction)")
    return "\n".join(lines)


def results_json(result: dict[str, Any], **info: Any) -> dict[str, Any]:
    """JSON-safe results in percent (NaN -> null)."""
    import math

    from harness.labels import CLASSES

    def pct(v: float) -> float | None:
        return None if math.isnan(v) else round(100 * v, 4)

    return {
        **info,
        "units": "percent",
        "num_images": result["num_images"],
        **{k: pct(result[k]) for k in ("miou", "miou16", "miou13", "pixel_acc")},
        "iou": {name: pct(v) for name, v in zip(CLASSES, result["iou"])},
    }


def run_eval(args: argparse.Namespace) -> int:
    import json
    import os

    import torch

    from harness.engine.evaluation import MEAN, STD, evaluate
    from harness.errors import UsageError

    model, cfg = load_model(args.checkpoint)
    ds_cfg = dataset_config(args.data, cfg.data.val)
    from harness.data import build_dataset

    dataset = build_dataset(ds_cfg, resize_label=not cfg.eval.full_resolution_labels,
                            label_size=cfg.eval.label_size)
    if len(dataset) == 0:
        raise UsageError(f"validation set {ds_cfg.name} at {ds_cfg.root} ({ds_cfg.split}) holds no images")
    device = pick_device(args.device)
    mode = args.mode or cfg.eval.mode
    crop = tuple(args.crop) if args.crop else cfg.eval.crop
    stride = tuple(args.stride) if args.stride else cfg.eval.stride
    if mode == "slide" and crop is None:
        raise UsageError("--mode slide needs --crop H W (the checkpoint's eval.crop is not set)")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images {args.max_images}: expected a positive number")
    if stride is not None and crop is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
        raise UsageError(f"--stride {stride} larger than --crop {crop} would leave pixels unpredicted")
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=args.workers)
    result = evaluate(model.to(device), loader, device, mode=mode, crop=crop, stride=stride,
                      mean=MEAN, std=STD, max_images=args.max_images)
    m = cfg.model
    where = " ".join(str(v) for v in (ds_cfg.name, ds_cfg.domain, ds_cfg.split) if v)
    print(f"{args.checkpoint}: {m.arch}/{m.backbone} on {where} at {ds_cfg.root} "
          f"({result['num_images']} images, {mode})")
    print(format_table(result))
    if args.json_out:
        out = Path(args.json_out)
        payload = results_json(result, checkpoint=str(args.checkpoint), arch=m.arch, backbone=m.backbone,
                               data=ds_cfg.model_dump(mode="json"), mode=mode,
                               crop=list(crop) if crop else None, stride=list(stride) if stride else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"results: {out}")
    return 0

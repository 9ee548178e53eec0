"""`udabench train CONFIG [--set key=value ...]`: one training run from a run config file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train one run from a config file",
        description="Train one run. CONFIG is a run config YAML (see studies/configs/); --set overrides "
                    "any field, e.g. --set schedule.iterations=200 --set method.host=dacs. Unknown keys "
                    "are rejected with the closest valid name. The resolved config, checkpoints and "
                    "metrics.json are written to the output folder.")
    p.add_argument("config", nargs="?", help="run config YAML (default: the built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--scale", help="apply a named scale preset first (smoke, demo, cpu, paper)")
    p.add_argument("--output", help="output folder (default: config 'output')")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint file or folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """Config file < scale preset (with the recipe of the run's architecture) < --set, as in studies."""
    from harness.config import apply_overrides, load_raw, raw_arch
    from harness.engine.resolve import load_config

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output={args.output}")
    extra = None
    if args.scale:
        from harness.scales import raw_aux, scale_overlay

        raw = apply_overrides(load_raw(args.config) if args.config else {}, overrides)
        extra = scale_overlay(args.scale, raw_arch(raw), raw_aux(raw))
    return load_config(args.config, overrides, extra=extra)


def run(args: argparse.Namespace) -> int:
    import json
    import math
    from pathlib import Path

    import yaml

    cfg = resolve_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from harness.engine.training import TrainingDiverged, train

    try:
        metrics = train(cfg, resume=args.resume)
    except TrainingDiverged as e:
        import sys

        sys.stderr.write(f"udabench train: diverged: {e}\n")
        return 1
    out = Path(cfg.output) / "metrics.json"
    out.write_text(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                               for k, v in metrics.items()}, indent=2))
    print(f"target mIoU {metrics['target_miou']:.2f} after {cfg.schedule.iterations} iterations; "
          f"metrics: {out}")
    return 0

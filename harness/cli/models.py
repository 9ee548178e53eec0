"""`udabench models`: the registered architectures and their parameter counts. Heavy imports happen
inside the command, so `udabench --help` stays fast."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the segmentation architectures and their parameter counts",
        description="List the registered architectures and the parameter counts (encoder, decoder, total) "
                    "of each at paper scale (deeplabv2/resnet101c with ASPP (6, 12), daformer/pvt_v2_b5, segformer/pvt_v2_b5), "
                    "counted by building the models on the meta device (no memory, no weights).")
    p.add_argument("--backbone", help="count every architecture with this timm backbone instead")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture option, e.g. embed_dim=64 (repeatable)")
    p.set_defaults(func=run_models)


def _parse_options(items: list[str]) -> dict[str, Any]:
    from harness.config import parse_override

    options: dict[str, Any] = {}
    for text in items:
        keys, value = parse_override(text)
        options[".".join(keys)] = value
    return options


def parameter_counts(arch: str, backbone: str | None = None, **options: Any) -> dict[str, int]:
    """{"encoder", "decoder", "total"} parameter counts, from a model built on the meta device."""
    import torch

    from harness.models import create_segmentor

    with torch.device("meta"):
        model = create_segmentor(arch, backbone=backbone, **options)
    groups = model.param_groups()
    enc = sum(p.numel() for p in groups["encoder"])
    dec = sum(p.numel() for p in groups["decoder"])
    return {"encoder": enc, "decoder": dec, "total": enc + dec}


def run_models(args: argparse.Namespace) -> int:
    from harness.config import ConfigError
    from harness.models import MODELS, PAPER_BACKBONES, describe
    from harness.scales import scale_overlay

    options = _parse_options(args.options)
    rows, notes = [], []
    for arch in MODELS:
        backbone = args.backbone or PAPER_BACKBONES.get(arch)
        paper = {} if args.backbone else scale_overlay("paper", arch).get("model", {}).get("options", {})
        try:
            counts = parameter_counts(arch, backbone, **{**paper, **options})
            cells = [f"{counts[k] / 1e6:.2f}M" for k in ("encoder", "decoder", "total")]
        except (ConfigError, ValueError) as e:
            cells = ["-", "-", "-"]
            notes.append(f"{arch}/{backbone}: cannot build: {e}")
        rows.append((arch, backbone or "-", *cells, describe(arch)))
    header = ("arch", "backbone", "encoder", "decoder", "total", "description")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(5)]
    for r in (header, *rows):
        print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(r[:5], widths))) + "  " + r[5])
    for note in notes:
        print(note)
    return 0

"""`udabench weights list|verify`: which pretrained encoder each scale and architecture starts from, and
whether a file is the right one, before a long run depends on it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights", help="pretrained encoders: what each scale expects, and verify a file",
        description="List the pretrained encoder file each scale and architecture starts from (and where "
                    "to obtain the official ones), or verify a file: read as data only, converted from its "
                    "format (timm/torchvision, SegFormer MiT, mmseg ResNetV1c) and matched tensor by tensor "
                    "to the backbone; prints the format, the tensors matched and the file's sha256.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="the weights file per scale and architecture",
                            description="Per scale and architecture: backbone, model.pretrained, and whether "
                                        "the file is present under --root.")
    ls.add_argument("--scale", action="append", help="only this scale (repeatable; default: all)")
    ls.add_argument("--root", default=".", help="project folder the paths are relative to (default: .)")
    ls.set_defaults(func=cmd_list)
    v = actions.add_parser("verify", help="check that a file loads into an architecture's encoder",
                           description="Check FILE against the encoder of --arch at --scale (its backbone and "
                                       "encoder options), or against --backbone. Exit 2 when it does not match.")
    v.add_argument("file")
    v.add_argument("--arch", help="architecture (with --scale: its backbone there)")
    v.add_argument("--scale", default="paper", help="scale whose backbone --arch uses (default: paper)")
    v.add_argument("--backbone", help="a timm backbone name instead of --arch")
    v.set_defaults(func=cmd_verify)


def _model_of(scale: str, arch: str) -> dict:
    from harness.config import RunConfig, deep_merge
    from harness.scales import scale_overlay

    base = RunConfig().to_dict()["model"]
    return deep_merge(deep_merge(base, {"arch": arch}), scale_overlay(scale, arch).get("model", {}))


def cmd_list(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.models import MODELS
    from harness.models.weights import official_for
    from harness.registry import closest
    from harness.scales import SCALES

    scales = args.scale or list(SCALES)
    for s in scales:
        if s not in SCALES:
            from harness.errors import UsageError

            raise UsageError(f"--scale {s}: unknown scale{closest(s, SCALES)}; valid: {', '.join(SCALES)}")
    rows, notes = [], {}
    for s in scales:
        for arch in MODELS:
            m = _model_of(s, arch)
            file = m.get("pretrained")
            state = "random init" if not file else ("present" if (Path(args.root) / file).is_file() else "MISSING")
            rows.append((s, arch, m["backbone"], file or "-", state))
            if file and (official := official_for(file)):
                notes[file] = official
    header = ("scale", "arch", "backbone", "model.pretrained", "here")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    for file, w in notes.items():
        print(f"\n{file}: {w.what} ({w.format} format, loads into timm {w.backbone})\n"
              f"  obtain: {w.source}\n  used by: {w.used_by}")
    if any(r[4] == "MISSING" for r in rows):
        print("\nA scale whose file is MISSING refuses to start; set model.pretrained: null to start from a "
              "random initialisation instead (the published numbers all start from these weights).")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    from harness.models import segmentor_class
    from harness.models.weights import verify

    if bool(args.arch) == bool(args.backbone):
        raise UsageError("give --arch (with --scale) or --backbone")
    timm_kwargs = {}
    if args.arch:
        from harness.scales import SCALES

        if args.scale not in SCALES:
            raise UsageError(f"--scale {args.scale}: unknown scale; valid: {', '.join(SCALES)}")
        m = _model_of(args.scale, args.arch)
        backbone = m["backbone"]
        opts = segmentor_class(args.arch).parse_options(m.get("options", {}))
        # a wrapper (HRDA) builds its base with the base's encoder options, its own over them
        base = getattr(opts, "base_options", {}).get("encoder_options", {})
        timm_kwargs = {**base, **opts.encoder_options}
    else:
        backbone = args.backbone
    v = verify(args.file, backbone, **timm_kwargs)
    print(f"{v.path}: OK for timm {v.backbone}: {v.format} format, {v.matched} tensors matched"
          + (f", classifier dropped ({len(v.dropped)} tensors)" if v.dropped else "")
          + f"; sha256 {v.sha256}")
    return 0

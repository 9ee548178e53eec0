"""`udabench recipe`: the recipe parity table, each published host's official recipe value beside the value
udabench resolves for it at paper scale (harness/report/recipe.py; reports/recipe_parity.md is its output)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe", help="the recipe parity table: udabench's paper-scale values beside the official ones",
        description="For each published host (DACS on DeepLab-v2 as DAFormer re-ran it, DAFormer, MIC(DAFormer), "
                    "HRDA(DAFormer), MIC(HRDA), SePiCo ProtoCL(DAFormer)): every recipe value of the study trial that runs it at paper scale, "
                    "beside the official value and the official file it comes from, with any remaining "
                    "difference named, and the value at the small scales. Generated from the code; "
                    "`udabench recipe > reports/recipe_parity.md` writes the committed copy.")
    p.add_argument("--host", action="append", metavar="NAME",
                   help="only this host (repeatable; default: all)")
    p.add_argument("--scale", action="append", metavar="SCALE",
                   help="only this scale, paper or paper-synthia (repeatable; default: every scale a host has an "
                        "official run at)")
    p.add_argument("--format", choices=("md", "csv"), default="md", help="Markdown (default) or CSV")
    p.set_defaults(func=cmd_recipe)


def cmd_recipe(args: argparse.Namespace) -> int:
    import sys

    from harness.errors import UsageError
    from harness.official import HOSTS
    from harness.registry import closest

    for name in args.host or []:
        if name not in HOSTS:
            raise UsageError(f"--host {name}: unknown host{closest(name, HOSTS)}; valid: {', '.join(HOSTS)}")
    official_scales = sorted({s for h in HOSTS.values() for s in h.scales})
    for scale in args.scale or []:
        if scale not in official_scales:
            raise UsageError(f"--scale {scale}: no official recipe at this scale{closest(scale, official_scales)}; "
                             f"valid: {', '.join(official_scales)}")

    from harness.report.recipe import csv_text, host_scales, markdown

    pairs = host_scales(args.host, args.scale)
    if not pairs:
        runs = "; ".join(f"{h}: {', '.join(HOSTS[h].scales)}" for h in (args.host or HOSTS))
        raise UsageError(f"no official run of the hosts at --scale {', '.join(args.scale)} ({runs})")
    sys.stdout.write(csv_text(pairs) if args.format == "csv" else markdown(pairs) + "\n")
    return 0

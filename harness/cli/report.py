"""`udabench report [STUDY ...]`: tables, figures and one page per study from the MLflow runs.

Heavy imports (mlflow, pandas, seaborn) happen inside the command, so `udabench --help` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="build tables, figures and pages for studies from their MLflow runs",
        description="Read the finished runs of each STUDY (an MLflow experiment; default: every study "
                    "in the store) and write reports/<study>/README.md with Markdown, LaTeX and CSV "
                    "tables and seaborn figures, plus reports/metrics.json for DVC. Runs of different "
                    "data, code, scale or config are refused unless --allow-mixed.")
    p.add_argument("studies", nargs="*", metavar="STUDY",
                   help="a study name (every run of its MLflow experiment) or a study file "
                        "(studies/x.yaml: only the runs of its current trials); default: every study")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the project's store)")
    p.add_argument("--scale", action="append", default=[], metavar="[STUDY=]SCALE",
                   help="only runs tagged with this scale (smoke | demo | cpu | paper); STUDY=SCALE "
                        "for one study (repeatable)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="put runs with different data hashes, code commits or scales into one table")
    p.add_argument("--no-figures", action="store_true", help="tables and pages only")
    p.add_argument("--no-curves", action="store_true",
                   help="skip the training-curve figures (they read the metric history)")
    p.add_argument("--max-curve-groups", type=int, default=16, metavar="N",
                   help="training curves show the N best settings of a study (default: 16)")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="write up to N studies' folders side by side in worker processes (default 0: one "
                        "per CPU other processes leave idle; 1: all in this process)")
    p.add_argument("--select", default="last", metavar="RULE",
                   help="which evaluation (checkpoint) of each run the tables report: last (default), oracle "
                        "(each run's best target mIoU: uses target labels, labelled oracle selection), or a "
                        "label-free criterion the runs logged: entropy, im, teacher_agreement, consistency. "
                        "Every page also has a selection table comparing the criteria")
    p.add_argument("--against", default=None, metavar="REFERENCE",
                   help="compare every run with a reference (references/*.yaml, or a committed report "
                        "folder / its tables/trials.csv): runs outside the reference's band, collapsed "
                        "classes, environment differences; a table on each page and a summary here "
                        "(exit 0 even when runs are flagged)")
    p.add_argument("--export-reference", default=None, type=Path, metavar="OUT",
                   help="write a reference file (YAML) from the committed results tables given as STUDY "
                        "arguments (report folders such as reports/gap, or their tables/trials.csv), "
                        "and nothing else")
    p.add_argument("--reference-name", default=None, metavar="NAME",
                   help="the name written into --export-reference's file (default: the file's stem)")
    p.set_defaults(func=run)


def check_out(out: Path) -> None:
    """--out must be a folder or a path where one can be made: not a file, nor under one."""
    from harness.errors import UsageError

    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                kind = "a file" if p.is_file() else "not a folder"
                what = f"is {kind}" if p == out else f"is under {p}, which is {kind}"
                raise UsageError(f"--out {out}: {what}; expected a folder for the reports (existing or new)")
            return


def run(args: argparse.Namespace) -> int:
    from harness.errors import UsageError

    if args.export_reference is not None:
        return export_reference(args)
    from harness.report.page import build_reports
    from harness.report.runs import ReportError, ReportOptions

    scale, per_study = None, {}
    for value in args.scale:
        if "=" in value:
            study, _, s = value.partition("=")
            per_study[study] = s
        elif scale is not None and value != scale:
            raise UsageError(f"--scale {scale} and --scale {value}: one scale for all studies, or STUDY=SCALE")
        else:
            scale = value
    from harness.report.selection import check_rule

    try:
        check_rule(args.select)  # before any work
    except ReportError as e:
        raise UsageError(str(e)) from None
    if args.jobs < 0:
        raise UsageError(f"--jobs {args.jobs}: expected 0 (one per CPU) or a positive number of processes")
    opts = ReportOptions(out=args.out, tracking_uri=args.tracking_uri, allow_mixed=args.allow_mixed,
                         scale=scale, study_scales=per_study, figures=not args.no_figures,
                         curves=not args.no_curves, max_curve_groups=args.max_curve_groups, jobs=args.jobs)
    command = "udabench report " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if (
        len(sys.argv) > 1 and sys.argv[1] == "report") else "udabench report " + " ".join(args.studies)
    check_out(Path(args.out))
    from harness.report.runs import resolve_tracking_uri
    from harness.study.tracking import store_errors

    against = None
    if args.against:
        from harness.report.against import Against, load_reference

        against = Against(load_reference(args.against))  # a malformed reference: exit 2 before any work
    start = time.perf_counter()
    try:
        with store_errors(resolve_tracking_uri(args.tracking_uri)):  # a damaged store: one line, exit 2
            pages = build_reports(args.studies or None, opts, command=command.strip(), against=against,
                                  rule=args.select)
    except ReportError as e:
        raise UsageError(str(e)) from None
    for path in pages:
        print(path)
    print(f"{len(pages)} report(s), metrics in {Path(opts.out) / 'metrics.json'} "
          f"({time.perf_counter() - start:.1f} s)")
    if against is not None:
        print("\n".join(against.summary()))
    return 0


def export_reference(args: argparse.Namespace) -> int:
    """`--export-reference OUT TABLE ...`: a reference file from committed results tables."""
    from harness.errors import UsageError
    from harness.report.against import dump_reference, table_reference

    if not args.studies:
        raise UsageError("--export-reference: expected committed results tables as arguments "
                         "(report folders such as reports/gap, or their tables/trials.csv)")
    out = Path(args.export_reference)
    name = args.reference_name or out.stem
    ref = table_reference([Path(a) for a in args.studies], name=name,
                          description=f"Committed results of this project: {', '.join(args.studies)}")
    command = "udabench report " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if (
        len(sys.argv) > 1 and sys.argv[1] == "report") else f"udabench report --export-reference {out}"
    dump_reference(ref, out, command)
    runs = sum(len(c.runs) for c in ref.cells)
    print(f"{out}: {len(ref.cells)} reference entries, {runs} runs")
    return 0

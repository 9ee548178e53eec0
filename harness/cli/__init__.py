"""`udabench`: the one command-line entry point.

Each subcommand lives in its own module as `register(subparsers)`; heavy imports (torch, ray, mlflow)
happen inside the command functions, so `udabench --help` is instant. Usage errors exit with code 2
and a one-line message; a bad config or input file likewise names the file and field.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness.env import offline
from harness.errors import UsageError

# Each module registers one or more subcommands with `register(subparsers)`.
COMMANDS = (
    "harness.cli.data",
    "harness.cli.models",
    "harness.cli.weights",
    "harness.cli.recipe",
    "harness.cli.train",
    "harness.cli.eval",
    "harness.cli.study",
    "harness.cli.report",
    "harness.cli.demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        sys.stderr.write(f"udabench: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="udabench",
        description="Reproducible benchmark and ablation harness for unsupervised domain adaptation "
                    "in semantic segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # not written yet
            raise
        mod.register(sub)
    return parser


def _one_line_recipe_warnings() -> None:
    """A RecipeWarning (a config that runs but contradicts its recipe) as `udabench: warning: ...`,
    without the source line Python's warnings print; other warnings as Python prints them."""
    import warnings

    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if category.__name__ == "RecipeWarning":
            return f"udabench: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv: list[str] | None = None) -> int:
    offline()
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness.config import ConfigError
    from harness.data.io import DataError
    from harness.registry import UnknownNameError

    _one_line_recipe_warnings()
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError, DataError, UnknownNameError, FileNotFoundError) as e:
        msg = str(e)
        sys.stderr.write(f"udabench {args.command}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("udabench: interrupted\n")
        return 130
    except BrokenPipeError:  # `udabench ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

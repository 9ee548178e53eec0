"""The one CLI: --help everywhere, exit code 2 and one line for usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.cli import build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"train"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_usage_error_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "harness.cli", "no-such-command"], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "invalid choice" in r.stderr


def test_bad_override_is_one_line_exit_2(capsys):
    assert main(["train", "--set", "schedule.iteratons=3", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'iterations'" in err[0]

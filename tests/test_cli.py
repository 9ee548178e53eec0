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


def test_demo_writes_its_samples_and_report_where_git_and_dvc_do_not_look(monkeypatch, capsys):
    """`make demo` on a fresh clone leaves `git status` and `dvc status` as they were (issue 20, class
    6): its samples and report go to a git-ignored folder that no DVC stage writes, never into the
    committed reports/ (whose metrics.json is the pipeline's). The demo's commands are recorded, not
    run (the demo itself takes minutes)."""
    from pathlib import Path

    import yaml

    import harness.cli
    from harness.cli import demo

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_data", lambda: None)
    monkeypatch.setattr(harness.cli, "main", lambda argv: calls.append(argv) or 0)
    assert demo.run(build_parser().parse_args(["demo"])) == 0
    assert [c[0] for c in calls] == ["data", "study", "report"]
    samples, report = (Path(c[c.index("--out") + 1]) for c in calls if "--out" in c)
    written = [samples, report / "demo" / "README.md", report / "demo" / "tables" / "main.csv",
               report / "metrics.json"]
    ignored = subprocess.run(["git", "check-ignore", *map(str, written)], cwd=root, capture_output=True,
                             text=True)
    assert ignored.returncode == 0 and ignored.stdout.split() == [str(p) for p in written]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    dvc_outs = {str(next(iter(o)) if isinstance(o, dict) else o).split("/")[0]
                for s in stages.values() for kind in ("outs", "metrics", "plots")
                for o in s.get("do", s).get(kind, [])}
    assert "reports" in dvc_outs and not {p.parts[0] for p in written} & dvc_outs
    out = capsys.readouterr().out
    assert f"report:  {report / 'demo' / 'README.md'}" in out and f"samples: {samples}" in out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert f"{demo.OUT}/ (git-ignored)" in " ".join(capsys.readouterr().out.split())

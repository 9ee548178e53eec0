"""`python -m harness.cli`: the `udabench` command."""

from harness.cli import main

raise SystemExit(main())

"""The error a command raises for bad arguments or input, anywhere below the CLI.

`harness.cli.main` prints it as one line and exits with code 2, like `ConfigError` (harness.config),
`UnknownNameError` (harness.registry) and the errors that subclass them. It lives here, at the
foundation, so that every layer can raise it without importing the CLI above it.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad arguments or input: printed as one line, exit code 2."""

"""CLI error types, each with its exit code: 2 for bad usage or arguments, 1 for failures while running."""

from __future__ import annotations


class CLIError(Exception):
    """An error the CLI reports as one line on stderr, exiting with `exit_code`."""

    exit_code = 1


class UsageError(CLIError):
    """Bad arguments: a value out of range, a flag whose feature is unavailable, a model of the wrong kind."""

    exit_code = 2


class RunError(CLIError):
    """A failure while running: a model that cannot be loaded, an output that cannot be written."""

    exit_code = 1

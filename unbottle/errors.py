"""Errors a user can cause, each with the exit code the command line reports it with: 2 bad usage, 1 a failed run.

Raised by the command line and by the benchmark and batch runners it drives; library functions raise `ValueError` /
`TypeError` naming the argument instead.
"""

from __future__ import annotations


class CLIError(Exception):
    """An error the command line reports as one line on stderr, exiting with `exit_code`."""

    exit_code = 1


class UsageError(CLIError):
    """Bad arguments: a value out of range, a flag whose feature is unavailable, a model of the wrong kind."""

    exit_code = 2


class RunError(CLIError):
    """A failure while running: a model that cannot be loaded, an output that cannot be written."""

    exit_code = 1

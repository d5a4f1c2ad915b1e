"""The command line's error types (defined package-wide in `unbottle.errors`)."""

from ..errors import CLIError, RunError, UsageError

__all__ = ["CLIError", "RunError", "UsageError"]

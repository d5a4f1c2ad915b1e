"""The log the shapes training scripts write: timestamped lines to stdout and, appended and flushed, to a file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def open_log(path: str | Path) -> Callable[[str], None]:
    """A `log(message)` that prints `[HH:MM:SS] message` and appends it to `path` (flushed: a cut-off run keeps it)."""
    logfile = open(path, "a")  # noqa: SIM115 — stays open for the life of the training run

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    log.file = logfile  # type: ignore[attr-defined]
    return log

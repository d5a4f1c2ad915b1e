"""One run per output folder: an exclusive `flock` on `out_dir/.unbottle-batch.lock`.

A run holds `out_dir` from before it reads the shards until its reports are written (`lock_output`; the file holds the
holder's pid and stays; the kernel releases the lock when its process ends, however it ends, so a killed run never
blocks the next). A second run on the same folder waits for the first (saying "waiting for another unbottle batch run
on DIR (pid N) to finish" once), then resumes and finds its work done; with `wait=False` (CLI `--no-wait`) it raises
`OutputLockedError` naming the folder and the pid instead. Under `accelerate launch` only the main process locks; the
others follow it, polling through broadcasts (no collective waits long enough to time out).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_FILE = ".unbottle-batch.lock"


class OutputLockedError(RuntimeError):
    """Another run holds the output folder and the caller would not wait; `out_dir` and `pid` (or None) name it."""

    def __init__(self, out_dir: Path, pid: int | None) -> None:
        self.out_dir, self.pid = out_dir, pid
        super().__init__(
            f"{str(out_dir)!r} is in use by another unbottle batch run ({_pid_text(pid)}); wait for it to finish, "
            "or write to another output folder"
        )


def _pid_text(pid: int | None) -> str:
    return f"pid {pid}" if pid is not None else "pid unknown"


_POLL_S = 0.2  # how often a waiting run tries the lock
_HELD: dict[tuple[str, int], list] = {}  # (folder, thread) → [lock file descriptor (None off the main process), depth]


def _open_lock(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    return os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _holder(fd: int) -> int | None:
    """The pid the lock's holder wrote into the lock file, if it reads as one."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def _acquire(out_dir: Path, state: Any, wait: bool, log: Callable[[str], None]) -> int | None:
    """The main process takes the lock (polling, so that the other processes can follow it through broadcasts)."""
    import fcntl

    several = state is not None and state.num_processes > 1
    main = state is None or state.is_main_process
    fd, said = None, False
    try:
        while True:
            status: tuple[str, int | None, str] = ("locked", None, "")
            if main:
                try:
                    if fd is None:
                        fd = _open_lock(out_dir)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                    except BlockingIOError:
                        pid = _holder(fd)
                        status = ("busy" if wait else "refused", pid, "")
                        if wait and not said:
                            log(f"waiting for another unbottle batch run on {out_dir} ({_pid_text(pid)}) to finish")
                            said = True
                except OSError as e:
                    status = ("error", None, f"cannot lock {str(out_dir / LOCK_FILE)!r}: {e.strerror or e}")
            if several:
                from accelerate.utils import broadcast_object_list

                status = tuple(broadcast_object_list([status])[0])
            kind, pid, message = status
            if kind == "locked":
                return fd
            if kind == "refused":
                raise OutputLockedError(out_dir, pid)
            if kind == "error":
                raise OSError(message)
            time.sleep(_POLL_S)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise


@contextmanager
def lock_output(out_dir: str | os.PathLike, state: Any = None, *, wait: bool = True,
                log: Callable[[str], None] | None = None) -> Iterator[None]:  # fmt: skip
    """Hold `out_dir` for one batch run: an exclusive `flock` on `out_dir/.unbottle-batch.lock`.

    Only the main process of `state` locks; the others follow it. If another run holds the folder, wait for it
    (saying so once through `log`) or, with `wait=False`, raise `OutputLockedError`. Re-entrant within a thread."""
    out_dir = Path(out_dir).expanduser()
    key = (os.path.realpath(out_dir), threading.get_ident())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = _acquire(out_dir, state, wait, log or (lambda _: None))
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays (removing it would race with a run opening it)


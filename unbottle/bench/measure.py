"""What the suites share to build and time their workloads: progress lines, error strings, device synchronization,
wall-clock timing, peak memory, and casting random-weight models as `from_pretrained` would."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

import torch


def log(message: str) -> None:
    """Progress on stderr, flushed (a run cut short by a time limit still shows how far it got)."""
    print(message, file=sys.stderr, flush=True)


def error_text(e: BaseException, caught: list | None = None) -> str:
    """One line: the exception's type and last message line, plus the warnings caught with it (SDPA says why there)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[-1] if lines else ''}".strip()
    reasons = [str(w.message).strip().splitlines()[0] for w in caught or [] if str(w.message).strip()]
    if reasons:
        text += f" [{' '.join(dict.fromkeys(reasons))}]"
    return text[:600]


def sync(device: torch.device) -> None:
    """Wait for the GPU (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Return cached blocks to the GPU between backends and shapes; never raises (a broken context stays broken)."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of one call, the device synchronized before and after; and its result."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def peak_reset(device: torch.device) -> None:
    """Start a new peak of `torch.cuda.max_memory_allocated` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """`torch.cuda.max_memory_allocated` in GiB (2 decimals) since the last `peak_reset`; None off CUDA."""
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def gib(n_bytes: float | None, digits: int = 2) -> float | None:
    """Bytes in GiB, rounded to `digits`; None stays None."""
    return None if n_bytes is None else round(n_bytes / 2**30, digits)


def cast_like_from_pretrained(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Floating tensors to `dtype`, except `_keep_in_fp32_modules` (Wan: time embedder, norms, RoPE), which stay fp32
    as `from_pretrained(torch_dtype=...)` keeps them."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep.intersection(name.split(".")) else dtype)
    return module

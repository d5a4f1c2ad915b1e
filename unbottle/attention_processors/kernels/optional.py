"""What the optional kernel packages (the `hopper` extra) share: whether one imports here, and the device and dtype
checks every one of them makes before it takes a call."""

from __future__ import annotations

import functools
import importlib

import torch


@functools.cache
def importable(module: str, *names: str) -> bool:
    """Whether `module` imports here and has `names` (False for any failure: absent, or a library it cannot load)."""
    try:
        found = importlib.import_module(module)
        return all(hasattr(found, name) for name in names)
    except Exception:  # noqa: BLE001 — absent, or a CUDA/DSL library it cannot load
        return False


def device_refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, majors: tuple[int, ...], what: str,
                   dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)) -> str | None:  # fmt: skip
    """Why a kernel for GPUs of compute capability `majors` (named `what`) and `dtypes` cannot take q, k, v."""
    if not q.is_cuda:
        return "it needs CUDA tensors"
    if torch.cuda.get_device_capability(q.device)[0] not in majors:
        return f"it needs an {what} GPU"
    if q.dtype not in dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"it takes float16/bfloat16, got {q.dtype}"
    return None

"""How a wrapped stock processor's scaled-dot-product call reaches its sparse layer.

Two catches, one routing rule (`SDPACatch.route`):
- **Swap** (eager): while a wrapped processor runs, `torch.nn.functional.scaled_dot_product_attention` is a
  dispatcher that hands the call to the catch of the running context. The processor's other torch calls run
  untouched, which matters where attention is cheap (a few hundred tokens on a CPU). The dispatcher is installed
  once however many processors nest or run in threads, and the function it replaced is put back when the last one
  ends; other threads' calls pass straight through.
- **Mode** (under compilation, and for a processor class until it has shown that it looks SDPA up by name): a
  `TorchFunctionMode` sees every torch call of the processor. Dynamo traces it; under compilation `Tensor.unflatten`
  (Python code calling `super()`, which Dynamo in torch 2.11 cannot trace from inside a mode) runs as
  `torch.unflatten`, the same ATen op.
A processor class that bound SDPA at import time, where swapping the name cannot reach it, keeps the mode.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .compiled import sparse_sdpa

_SDPA, _UNFLATTEN = F.scaled_dot_product_attention, torch.Tensor.unflatten
_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class _Layer(Protocol):
    token: torch.Tensor

    def attend(self, q, k, v, attn_mask=None, scale=None) -> torch.Tensor | None: ...


class SDPACatch:
    """Routes the scaled-dot-product calls of one wrapped processor call to `layer.attend`; counts them."""

    def __init__(self, layer: _Layer, verify: bool = False) -> None:
        self.layer, self.verify = layer, verify  # verify: swap and mode both open, to learn the processor's route
        self.calls = 0  # calls that reached the routing rule
        self.by_name = 0  # verifying: calls that looked SDPA up by name (the swap's dispatcher saw them)

    def route(self, sdpa, args: tuple, kwargs: dict) -> torch.Tensor:
        """Self-attention (B, H, N, D) goes to the layer; anything else, and the layer's dense steps, to `sdpa`."""
        self.calls += 1
        call = dict(zip(_NAMES, args, strict=False)) | kwargs
        q, k, v = call["query"], call["key"], call["value"]
        mask = call.get("attn_mask")
        if (
            q.dim() != 4 or q.shape[2] != k.shape[2] or call.get("dropout_p", 0.0) or call.get("is_causal", False)
            or (mask is not None and mask.dim() == 4 and mask.shape[-2] not in (1, q.shape[2]))
        ):  # fmt: skip
            return sdpa(*args, **kwargs)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: expand the key/value heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        if torch.compiler.is_compiling():  # the engine decides on the host: one opaque op in the graph
            scale = call.get("scale")
            return sparse_sdpa(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None else scale, self.layer.token)
        token = _ACTIVE.set(None)  # the engine's own SDPA calls are not the processor's
        try:
            out = self.layer.attend(q, k, v, attn_mask=mask, scale=call.get("scale"))
        finally:
            _ACTIVE.reset(token)
        return sdpa(*args, **kwargs) if out is None else out


class CatchMode(TorchFunctionMode):
    """The mode form: every torch call of the processor passes `__torch_function__`; SDPA is routed."""

    def __init__(self, catch: SDPACatch) -> None:
        super().__init__()
        self.catch = catch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not _SDPA:  # every torch call of the wrapped processor passes here: keep this path short
            if func is _UNFLATTEN and torch.compiler.is_compiling():
                return torch.unflatten(*args, **kwargs)  # the same op, traceable (module docstring)
            return func(*args, **kwargs)
        return self.catch.route(func, args, kwargs)


_ACTIVE: contextvars.ContextVar[SDPACatch | None] = contextvars.ContextVar("unbottle_sdpa_catch", default=None)
_LOCK = threading.Lock()
# how many swaps are open, and the function the dispatcher replaced (kept after the last swap closes, for a call
# another thread looked up just before)
_swap = {"depth": 0, "replaced": _SDPA}


def _dispatch(*args, **kwargs):
    """`F.scaled_dot_product_attention` while a swap is open: the running context's catch, else what it replaced."""
    catch, replaced = _ACTIVE.get(), _swap["replaced"]
    if catch is None:
        return replaced(*args, **kwargs)
    if catch.verify:  # the mode around this call routes it, and counts what reaches torch
        catch.by_name += 1
        return replaced(*args, **kwargs)
    return catch.route(replaced, args, kwargs)


class SwapSDPA:
    """The swap form as a context manager; for a verifying catch it also opens the mode, to learn whether the
    processor's SDPA calls all go through the name (then `catch.by_name == catch.calls`)."""

    def __init__(self, catch: SDPACatch) -> None:
        self.catch = catch
        self._mode = CatchMode(catch) if catch.verify else None

    def __enter__(self) -> SDPACatch:
        with _LOCK:
            if _swap["depth"] == 0:
                _swap["replaced"] = F.scaled_dot_product_attention
                F.scaled_dot_product_attention = _dispatch
            _swap["depth"] += 1
        self._token = _ACTIVE.set(self.catch)
        if self._mode is not None:
            self._mode.__enter__()
        return self.catch

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
        _ACTIVE.reset(self._token)
        with _LOCK:
            _swap["depth"] -= 1
            if _swap["depth"] == 0:
                if F.scaled_dot_product_attention is _dispatch:  # another library's later patch is left in place
                    F.scaled_dot_product_attention = _swap["replaced"]


_BY_NAME: dict[type, bool] = {}  # processor class -> whether its SDPA calls go through the name (learned once)


def catching(layer: _Layer, processor_type: type) -> tuple[SDPACatch, object]:
    """A catch for one call of a processor of `processor_type`, and the context manager that opens it."""
    if torch.compiler.is_compiling():
        catch = SDPACatch(layer)
        return catch, CatchMode(catch)
    known = _BY_NAME.get(processor_type)
    catch = SDPACatch(layer, verify=known is None)
    return catch, (CatchMode(catch) if known is False else SwapSDPA(catch))


def learn(processor_type: type, catch: SDPACatch) -> None:
    """After a verifying call: remember whether `processor_type` reaches SDPA by name (no evidence without a call)."""
    if catch.verify and catch.calls:
        _BY_NAME[processor_type] = catch.by_name == catch.calls

"""Attach the step machinery to a denoiser: the clock hook, one statistics hook per sparse layer, fresh registries.

Shared by `enable_sparse_attention` (before the first forward) and the drop-in `SparseAttnProcessor` (during the
first forward, found by walking up the call stack to the supported model whose forward is running).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..families import SelfAttention, UnsupportedModelError, family_for_model
from .config import SparseAttentionConfig
from .context_parallel import sequence_shards
from .diffusers_compat import NO_BRANCH, refresh_contexts, register_hook
from .state import MODEL_HOOK, Clock, ForwardInfo, LayerStateHook, ModelClockHook, layer_state_hook


@dataclass
class Attachment:
    """The hooks sparse attention put on one denoiser."""

    model: torch.nn.Module
    adapter: SelfAttention  # the family's sparse-attention part
    clock: ModelClockHook
    layer_hooks: dict[str, LayerStateHook] = field(default_factory=dict)  # by module name
    names: dict[int, str] = field(default_factory=dict)  # id(module) -> module name


def sparse_modules(model: torch.nn.Module, adapter: SelfAttention) -> dict[str, torch.nn.Module]:
    """The self-attention modules the family's attention part makes sparse, by name."""
    return {
        name: module for name, module in model.named_modules()
        if hasattr(module, "processor") and adapter.selects(name) and not getattr(module, "is_cross_attention", False)
    }  # fmt: skip


def attach(
    model: torch.nn.Module, config: SparseAttentionConfig, num_steps: Callable[[], int | None] | None = None
) -> Attachment:
    """Register the clock on `model` and a statistics hook on each sparse layer; diffusers' contexts reach them."""
    adapter = family_for_model(model, "sparse").attention
    shards = sequence_shards(model, sparse_modules(model, adapter))  # raises (ring, heads) before any change
    attachment = Attachment(model, adapter, clock=None)  # type: ignore[arg-type]

    def on_new_generation(branch: str) -> None:
        for hook in attachment.layer_hooks.values():
            hook.states.pop(branch, None)

    def on_rename(old: str, new: str) -> None:
        for hook in attachment.layer_hooks.values():
            if old in hook.states:
                hook.states[new] = hook.states.pop(old)

    fraction = config.full_steps if isinstance(config.full_steps, float) else None
    attachment.clock = ModelClockHook(adapter.read_call, on_new_generation, num_steps, fraction, on_rename)
    attachment.clock.shards, attachment.clock.parallel = shards, getattr(model, "_parallel_config", None)
    register_hook(model, attachment.clock, MODEL_HOOK)
    for name, module in sparse_modules(model, adapter).items():
        attachment.layer_hooks[name] = layer_state_hook(module)
        attachment.names[id(module)] = name
    refresh_contexts(model)  # so cache_context names reach the new hooks
    return attachment


def scheduler_steps(pipe: object) -> Callable[[], int | None]:
    """Reads the number of steps of the pipeline's current call from its scheduler."""

    def num_steps() -> int | None:
        steps = getattr(getattr(pipe, "scheduler", None), "num_inference_steps", None)
        return int(steps) if isinstance(steps, int) and steps > 0 else None

    return num_steps


def _call_arguments(model: torch.nn.Module, forward_frame) -> dict:
    """The arguments the running forward was called with: from `Module._call_impl`'s frame (the forward's own locals
    may already be rebound, e.g. `timestep` to its embedding), falling back to the forward's locals."""
    frame = forward_frame.f_back
    for _ in range(6):
        if frame is None:
            break
        if frame.f_code.co_name in ("_call_impl", "_wrapped_call_impl") and "args" in frame.f_locals:
            args, kwargs = frame.f_locals["args"], frame.f_locals.get("kwargs") or {}
            try:
                return inspect.signature(type(model).forward).bind_partial(model, *args, **kwargs).arguments
            except TypeError:
                break
        frame = frame.f_back
    return dict(forward_frame.f_locals)


def running_denoiser(max_depth: int = 64) -> tuple[torch.nn.Module, dict, object | None] | None:
    """(model, its forward's arguments, the pipeline calling it or None) for the innermost supported denoiser whose
    forward is on the call stack, else None."""
    from diffusers import DiffusionPipeline

    frame, found = sys._getframe(1), None
    for _ in range(max_depth):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if found is None and isinstance(owner, torch.nn.Module) and frame.f_code.co_name == "forward":
            try:
                family_for_model(owner, "sparse")
            except UnsupportedModelError:
                pass
            else:
                found = (owner, _call_arguments(owner, frame))
        elif found is not None and isinstance(owner, DiffusionPipeline):
            return (*found, owner)
        frame = frame.f_back
    return (*found, None) if found is not None else None


def first_forward_info(attachment: Attachment, bound: dict) -> ForwardInfo:
    """The clock's view of the forward that was already running when the drop-in processor attached."""
    timestep, layout = attachment.adapter.read_call(attachment.model, bound)
    clock = attachment.clock.clocks.setdefault(NO_BRANCH, Clock())
    clock.advance(timestep, None)
    attachment.clock.provisional = True
    num_steps = attachment.clock.num_steps() if attachment.clock.num_steps else None
    attachment.clock.pending = ForwardInfo(clock.step, num_steps, timestep, clock.first_timestep, None, layout,
                                           attachment.clock.shards)  # fmt: skip
    return attachment.clock.pending

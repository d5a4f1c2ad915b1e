"""Step awareness without the user's help: per-branch clocks on the denoiser, per-branch layer states on each layer.

Both are stateful diffusers hooks (diffusers_compat.py), so a pipeline's `cache_context("cond"/"uncond")` switches
their branch and its end-of-call `_reset_stateful_cache()` clears them. The denoiser clock also spots a new
generation by itself (the timestep went up, or the context's step index went back), which covers pipelines without
either seam. The layer states are the engine's `LayerState`, one per CFG branch.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..families.layout import TokenLayout
from .context_parallel import SequenceShards, check_parallel_unchanged
from .diffusers_compat import NO_BRANCH, StatefulHook, context_step, get_hook, register_state_hook
from .engine import LayerState

MODEL_HOOK = "unbottle_sparse_clock"
LAYER_HOOK = "unbottle_sparse_layer"


@dataclass(frozen=True)
class ForwardInfo:
    """What the denoiser clock knows about the current forward, read by every sparse layer inside it."""

    step: int  # 0-based denoising step of this branch
    num_steps: int | None  # steps in this generation, if known
    timestep: float | None
    first_timestep: float | None  # of this generation
    full_until: int | None  # first step below the full-steps timestep threshold (fraction schedules, steps unknown)
    layout: TokenLayout | None
    shards: SequenceShards | None = None  # context parallelism: this rank's heads, the token order attention sees


CURRENT_FORWARD: contextvars.ContextVar[ForwardInfo | None] = contextvars.ContextVar("unbottle_forward", default=None)


@dataclass
class Clock:
    """One CFG branch's position in the current generation."""

    step: int = -1
    last_timestep: float | None = None
    last_index: int | None = None
    first_timestep: float | None = None
    full_until: int | None = None

    def advance(self, timestep: float | None, step_index: int | None) -> bool:
        """Move to this forward's step; True when it starts a new generation."""
        if step_index is not None:
            previous = self.last_index if self.last_index is not None else (self.step if self.step >= 0 else None)
            new = previous is None or step_index <= previous
            self.step, self.last_index = step_index, step_index
        elif timestep is not None:
            new = self.last_timestep is None or timestep > self.last_timestep
            if new:
                self.step = 0
            elif timestep < self.last_timestep:
                self.step += 1
        else:  # nothing to go by: every forward is a step
            new = self.step < 0
            self.step += 1
        if new:
            self.first_timestep, self.full_until = timestep, None
            if step_index is not None:
                self.step = step_index
        if timestep is not None:
            self.last_timestep = timestep
        return new


class ModelClockHook(StatefulHook):
    """On the denoiser: tracks the step per CFG branch and publishes `ForwardInfo` for the layers of each forward."""

    def __init__(
        self, read_call: Callable[[torch.nn.Module, dict], tuple[float | None, TokenLayout | None]],
        on_new_generation: Callable[[str], None], num_steps: Callable[[], int | None] | None = None,
        full_fraction: float | None = None, on_rename: Callable[[str, str], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.read_call, self.on_new_generation, self.num_steps = read_call, on_new_generation, num_steps
        self.full_fraction, self.on_rename = full_fraction, on_rename
        self.clocks: dict[str, Clock] = {}
        # set when the clock was attached during a forward whose CFG branch name had already gone by: that forward's
        # state sits under NO_BRANCH until the branch that continues it (same branch, lower timestep) shows up
        self.provisional = False
        self.pending: ForwardInfo | None = None  # the attach-time forward's info, until the clock's first forward
        self.on_forward: Callable[[], None] | None = None  # told of every forward before the clock moves
        self.shards: SequenceShards | None = None  # Ulysses context parallelism as the model had it when attached
        self.parallel: object | None = None  # the model's diffusers parallel config then (checked every forward)
        self._signature: inspect.Signature | None = None

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.pending = None
        check_parallel_unchanged(module, self.parallel)
        if self.on_forward is not None:
            self.on_forward()
        if self._signature is None:
            self._signature = inspect.signature(self.original_forward())
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        timestep, layout = self.read_call(module, bound)
        branch = self.branch()
        step_index, context_steps = context_step(self.context())
        if self.provisional and branch != NO_BRANCH and branch not in self.clocks:
            earlier = self.clocks.get(NO_BRANCH)
            if earlier is None or timestep is None or earlier.last_timestep is None:
                self.provisional = False
            elif timestep < earlier.last_timestep:  # the branch that continues the attach-time forward
                self.clocks[branch] = self.clocks.pop(NO_BRANCH)
                if self.on_rename is not None:
                    self.on_rename(NO_BRANCH, branch)
                self.provisional = False
        clock = self.clocks.setdefault(branch, Clock())
        if clock.advance(timestep, step_index):
            self.on_new_generation(branch)
        num_steps = context_steps or (self.num_steps() if self.num_steps else None)
        if (
            self.full_fraction is not None and num_steps is None and clock.full_until is None
            and timestep is not None and clock.first_timestep
            and timestep <= clock.first_timestep * (1.0 - self.full_fraction)
        ):  # fmt: skip
            clock.full_until = clock.step
        info = ForwardInfo(clock.step, num_steps, timestep, clock.first_timestep, clock.full_until, layout,
                           self.shards)  # fmt: skip
        token = CURRENT_FORWARD.set(info)
        try:
            return self.original_forward()(*args, **kwargs)
        finally:
            CURRENT_FORWARD.reset(token)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.clocks.clear()
        return module


class LayerStateHook(StatefulHook):
    """On a sparse attention module: its engine state per CFG branch (diffusers' cache context names the branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, LayerState] = {}

    def state(self) -> LayerState:
        """This call's branch's state, created on first use."""
        return self.states.setdefault(self.branch(), LayerState())

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.clear()
        return module


def layer_state_hook(module: torch.nn.Module) -> LayerStateHook:
    """The module's LayerStateHook, registered on first use."""
    hook = get_hook(module, LAYER_HOOK)
    if hook is None:
        hook = LayerStateHook()
        register_state_hook(module, hook, LAYER_HOOK)
    return hook

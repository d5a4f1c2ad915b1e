"""Step awareness for sparse attention on diffusion LMs (SparseD): which step of which generation a forward belongs to.

A generation's state (the step, its total, the prompt/generation boundary, every layer's cached patterns) lives on the
model's `DLMSparseState`. Three ways keep it current, strongest first:

1. **Notifications** (`DiffusionLMPipeline`, custom loops): `notify_dlm_generation_start(model, prompt_length,
   gen_length, ...)` once per generation, then `notify_dlm_step(model, step, total_steps)` before each step's forward
   (a step may run several forwards). `step == 0` after a started generation also starts a new one (SparseD resets
   its state at `now_step == 0`).
2. **A `callback_on_step_end`** for diffusers' stock `LLaDA2Pipeline`: `pipe(..., callback_on_step_end=
   dlm_step_callback(pipe.model))`. The pipeline calls it after each step as `(pipe, global_step, step_idx,
   callback_kwargs)`; it announces the next step and the planned total (`pipe.num_timesteps`) and teaches the state the
   pipeline's mask token, from which a new generation is spotted by its input (below).
3. **Nothing** (the model called directly): every forward of the model is one step, counted from `enable` (or the
   last `notify_dlm_generation_start` / `handle.reset()`).

Without notifications, a forward starts a new generation when its input cannot continue the last one: another batch
size, a shorter sequence, other tokens before the first masked position of the generation's first forward (the
prompt), or more masked tokens at the same length. This needs the mask token id (from the callback, or a
`mask_token_id` on the model's config / generation config); without it, call `notify_dlm_generation_start` (or
`handle.reset()`) between generations. The prompt/generation boundary for SparseD's isolated selection comes from
`prompt_length`, else from the first masked position of the generation's first forward; unknown, selection is joint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import SparseAttentionConfig
from .engine import LayerState, PatternStore
from .handle import HANDLE_ATTR
from .schedule import StepKind, StepRule

ADVICE = (
    "call unbottle.attention_processors.notify_dlm_step(model, step, total_steps), or pass "
    "callback_on_step_end=dlm_step_callback(model) to the pipeline."
)  # how to tell the step count, ending the schedule's warning


@dataclass
class DLMGeneration:
    """What is known about the current generation."""

    prompt_length: torch.Tensor | None = None  # (B,) first generated position per row, if notified
    gen_length: int | None = None
    total_steps: int | None = None
    attention_mask: torch.Tensor | None = None  # (B, N) 1 = real token, if notified (selection ignores the rest)
    first_input_ids: torch.Tensor | None = None  # (B, N) the first forward's tokens (prompt boundary, new generations)
    inferred_prompt: torch.Tensor | None = None  # (B,) first masked position of `first_input_ids`, once known
    forwards: int = 0  # forwards of the model in this generation
    last_shape: tuple[int, int] | None = None  # (B, N) of the last forward's input ids
    last_masked: int | None = None  # masked tokens in the last forward's input ids


class DLMSparseState:
    """Per-model sparse attention state for diffusion LMs: step clock, generation info, per-layer states."""

    def __init__(self, config: SparseAttentionConfig, mask_token_id: int | None = None) -> None:
        self.config = config
        self.rule = StepRule(config, ADVICE, first_step_dense=True)
        self.step = 0
        self.mode = "auto"  # "auto" (forwards are steps), "notified" (notify_dlm_step), "callback" (dlm_step_callback)
        self.mask_token_id = mask_token_id
        self.generation = DLMGeneration()
        self.layers: dict[str, LayerState] = {}  # this generation's, patterns included
        self.store = PatternStore()  # pattern computations per layer, over all generations (the patterns: in layers)
        self.generations = 0  # generations started since enable (notified, reset or detected)

    # -- generations ------------------------------------------------------------------------------------------------
    def start_generation(
        self, prompt_length: int | torch.Tensor | None = None, gen_length: int | None = None,
        attention_mask: torch.Tensor | None = None, total_steps: int | None = None,
    ) -> None:  # fmt: skip
        """Forget the last generation's patterns and statistics; the next forward is step 0 of a new one."""
        if prompt_length is not None:
            prompt_length = torch.as_tensor(prompt_length).detach().reshape(-1).long().cpu()
        self.generation = DLMGeneration(prompt_length, gen_length, total_steps, attention_mask)
        self.layers.clear()
        self.step = 0
        self.generations += 1

    def layer(self, name: str) -> LayerState:
        """Layer `name`'s state in this generation."""
        return self.layers.setdefault(name, LayerState())

    # -- the clock --------------------------------------------------------------------------------------------------
    def notify_step(self, step: int, total_steps: int | None) -> None:
        if self.mode == "notified" and step == 0 and self.generation.forwards > 0:  # SparseD: reset at now_step == 0
            self.start_generation()
        elif self.mode == "notified" and step < self.step:
            self.start_generation()
        self.mode = "notified"
        self.step = step
        if total_steps is not None:
            self.generation.total_steps = int(total_steps)

    def callback_step(self, next_step: int, total_steps: int | None, mask_token_id: int | None) -> None:
        self.mode = "callback"
        self.step = next_step
        if total_steps:
            self.generation.total_steps = int(total_steps)
        if mask_token_id is not None:
            self.mask_token_id = int(mask_token_id)

    def before_forward(self, input_ids: torch.Tensor | None) -> None:
        """The model is about to run a forward: advance the clock (auto), or spot a new generation by its input."""
        gen = self.generation
        ids = input_ids if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else None
        if ids is not None and ids.dtype not in (torch.long, torch.int):
            ids = None
        masked = None
        if ids is not None and self.mask_token_id is not None:
            masked = int((ids == self.mask_token_id).sum())
        if self.mode != "notified" and gen.forwards > 0 and ids is not None and self._starts_new(ids, masked):
            self.start_generation()
            gen = self.generation
        if self.mode == "auto" and gen.forwards > 0:
            self.step += 1
        elif self.mode == "callback" and gen.forwards == 0:
            self.step = 0
        if gen.forwards == 0 and ids is not None:
            gen.first_input_ids = ids.detach().clone()
        if ids is not None:
            gen.last_shape, gen.last_masked = (ids.shape[0], ids.shape[1]), masked
        gen.forwards += 1

    def _starts_new(self, ids: torch.Tensor, masked: int | None) -> bool:
        gen, mask_id = self.generation, self.mask_token_id
        if gen.last_shape is None or mask_id is None:
            return False
        b, n = ids.shape
        if b != gen.last_shape[0] or n < gen.last_shape[1]:
            return True
        if n == gen.last_shape[1] and masked is not None and gen.last_masked is not None and masked > gen.last_masked:
            return True
        first = gen.first_input_ids
        if first is None or first.shape[0] != b:
            return False
        prompt = self._inferred_prompt()
        if prompt is None:
            return False
        width = int(prompt.min())
        return width > 0 and not torch.equal(ids[:, :width].to(first.device), first[:, :width])

    def prompt_lengths_from_ids(self, ids: torch.Tensor) -> torch.Tensor | None:
        """(B,) position of each row's first masked token (rows without one: the row length), or None."""
        if self.mask_token_id is None:
            return None
        is_mask = ids == self.mask_token_id  # (B, N)
        if not bool(is_mask.any()):
            return None
        first = is_mask.float().argmax(1).long()  # (B,)
        return torch.where(is_mask.any(1), first, torch.full_like(first, ids.shape[1])).cpu()

    def _inferred_prompt(self) -> torch.Tensor | None:
        gen = self.generation
        if gen.inferred_prompt is None and gen.first_input_ids is not None:
            gen.inferred_prompt = self.prompt_lengths_from_ids(gen.first_input_ids)
        return gen.inferred_prompt

    def prompt_lengths(self, batch: int) -> torch.Tensor | None:
        """(B,) the first generated position of each row (notified, else inferred), or None (joint selection)."""
        p = self.generation.prompt_length
        if p is None:
            p = self._inferred_prompt()
        if p is None:
            return None
        if p.numel() == 1:
            return p.expand(batch)
        if p.numel() != batch:
            return None  # another batch than announced (e.g. a CFG copy): no isolation rather than a wrong one
        return p

    # -- the schedule -----------------------------------------------------------------------------------------------
    def kind(self) -> StepKind:
        """This step's kind: dense for the first `full_steps`, then sparse (with Re-ttention refreshes if reshape)."""
        gen = self.generation
        return self.rule.kind(self.step, gen.total_steps, assumed_steps=gen.gen_length, stacklevel=4)


def _model_of(model_or_pipe: object) -> object:
    if isinstance(model_or_pipe, torch.nn.Module):
        return model_or_pipe
    inner = getattr(model_or_pipe, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else model_or_pipe


def dlm_state(model_or_pipe: object) -> DLMSparseState | None:
    """The model's diffusion-LM sparse attention state, or None if sparse attention is not enabled on it."""
    handle = getattr(_model_of(model_or_pipe), HANDLE_ATTR, None)
    return handle.state if handle is not None else None


def notify_dlm_generation_start(
    model: object, prompt_length: int | torch.Tensor, gen_length: int, attention_mask: torch.Tensor | None = None,
    total_steps: int | None = None,
) -> None:  # fmt: skip
    """Start a new generation (SparseD: patterns are computed once per generation): the next forward is step 0.

    `prompt_length`: the first generated position, one int or one per row (B,): keys before it are the prompt, after
    it the generated region (SparseD's isolated selection picks blocks in each separately). `attention_mask` (B, N),
    1 for real tokens, keeps padding blocks out of the selection. A no-op on a model without sparse attention.
    """
    state = dlm_state(model)
    if state is None:
        return
    if prompt_length is None or bool((torch.as_tensor(prompt_length) < 0).any()):
        raise ValueError(f"prompt_length must be an int ≥ 0 or one per row, got {prompt_length!r}")
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 0:
        raise ValueError(f"gen_length must be an int ≥ 0, got {gen_length!r}")
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)):
        raise ValueError(f"total_steps must be an int or None, got {total_steps!r}")
    mode = state.mode
    state.start_generation(prompt_length, gen_length, attention_mask, total_steps)
    state.mode = "auto" if mode == "callback" else mode  # notified loops keep notifying; the rest count forwards


def notify_dlm_step(model: object, step: int, total_steps: int) -> None:
    """Tell the model which step (0-based) of `total_steps` its next forward runs (SparseD's `now_step`); no-op when
    sparse attention is off."""
    state = dlm_state(model)
    if state is None:
        return
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int ≥ 0, got {step!r}")
    state.notify_step(step, total_steps)


def dlm_step_callback(model: object) -> Callable[[object, int, int, dict], dict]:
    """A `callback_on_step_end` for diffusers' `LLaDA2Pipeline` that keeps SparseD's step clock on `model` current."""

    def callback(pipe: object, step: int, timestep: int, callback_kwargs: dict) -> dict:
        state = dlm_state(model)
        if state is not None:
            total = getattr(pipe, "num_timesteps", None)
            state.callback_step(int(step) + 1, total if isinstance(total, int) else None,
                                getattr(pipe, "mask_token_id", None))  # fmt: skip
        return callback_kwargs

    return callback

"""Driving the engine through SparseD's steps (Wang et al., 2025): which kernel runs the block-sparse calls (and how
many calls take which path), the SDPA backend of the dense steps, and one LLaDA generation's forward driven to a dense,
pattern or cached sparse step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .model import schedule_counts
from .options import MODES, DLMOptions


@dataclass
class SparseCalls:
    """Calls of the engine's block-sparse attention (SparseD) inside `route_sparse_attention`."""

    kernel: Callable
    fast: int = 0  # mask-free calls, run by `kernel`
    masked_reference: int = 0  # calls that carried a mask and fell back to the dense-masked PyTorch reference


@contextlib.contextmanager
def route_sparse_attention(kernel: Callable | None = None) -> Iterator[SparseCalls]:
    """Run the engine's mask-free block-sparse calls (SparseD, Wang et al. 2025) on `kernel` and count every call.

    Through the engine's `block_sparse_kernels`: calls without a mask go to a counting wrapper around `kernel`
    (default the engine's own `block_sparse_attention`), calls with a mask to a counting wrapper around the reference
    `block_sparse_attention_reference`; outside the block the engine runs its own functions again, also after an
    error."""
    from ...attention_processors.block_sparse import block_sparse_attention
    from ...attention_processors.engine import block_sparse_kernels
    from ...attention_processors.reference import block_sparse_attention_reference

    calls = SparseCalls(kernel if kernel is not None else block_sparse_attention)

    def routed(*args: Any, **kwargs: Any) -> Any:
        calls.fast += 1
        return calls.kernel(*args, **kwargs)

    def masked(*args: Any, **kwargs: Any) -> Any:
        calls.masked_reference += 1
        return block_sparse_attention_reference(*args, **kwargs)

    with block_sparse_kernels(fast=routed, masked=masked):
        yield calls


def triton_sparse_attention() -> contextlib.AbstractContextManager[SparseCalls]:
    """`route_sparse_attention` to `block_sparse_attention_triton`: SparseD's sparse steps on our Triton kernel."""
    from ...attention_processors.kernels import block_sparse_attention_triton

    return route_sparse_attention(block_sparse_attention_triton)


def kernel_route(mode: str) -> contextlib.AbstractContextManager[SparseCalls]:
    """The block-sparse kernel a sparse mode names: our Triton kernel for `sparsed-triton`; compiled FlexAttention
    alone for `sparsed-flex` (the engine's own call would take our kernel from `TRITON_MIN_KEYS` keys on Hopper)."""
    if MODES[mode][2] == "triton":
        return triton_sparse_attention()
    from ...attention_processors.block_sparse import block_sparse_attention_flex

    return route_sparse_attention(block_sparse_attention_flex)


def sdpa_backend(backend: str, device: torch.device) -> contextlib.AbstractContextManager:
    """`sdpa_kernel(backend)` on CUDA; nothing on the CPU (dry runs), where these backends do not exist."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, backend))


def prompt_ids(context: int, options: DLMOptions, vocab_size: int, device: torch.device) -> torch.Tensor:
    """(1, context − gen_length) seeded random prompt ids below the mask id (LLaDA's canvas: prompt + masks)."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + context)
    high = min(options.mask_token_id, vocab_size)
    return torch.randint(0, high, (1, context - options.gen_length), generator=generator).to(device)


class StepDriver:
    """One LLaDA generation's forward (Nie et al. 2025), driven to a dense, pattern or cached sparse step (SparseD).

    Each step is `DiffusionLMPipeline._block_logits` on the canvas [prompt | gen_length masks], batch 1, no mask,
    after the notifications the pipeline sends: `notify_dlm_generation_start` (prompt length, gen_length, a mask of
    ones, total_steps) for a new generation, then `notify_dlm_step(model, step, total_steps)`.
    """

    def __init__(self, pipe: Any, prompt: torch.Tensor, gen_length: int, total_steps: int, full_steps: float) -> None:
        self.pipe, self.model = pipe, pipe.model
        self.prompt_length, self.gen_length, self.total_steps = prompt.shape[1], gen_length, total_steps
        masks = torch.full((1, gen_length), pipe.mask_token_id, dtype=torch.long, device=prompt.device)
        self.x = torch.cat([prompt, masks], 1)  # (1, L)
        self.mask = torch.ones_like(self.x)  # (1, L): what the pipeline notifies (no padding)
        self.params = pipe._forward_parameters()
        self.first_sparse = schedule_counts(total_steps, full_steps)[0]
        self.last_kind: str | None = None  # the engine's kind for the last step (None: no engine)

    def _start(self) -> None:
        from ...attention_processors import notify_dlm_generation_start

        notify_dlm_generation_start(self.model, prompt_length=self.prompt_length, gen_length=self.gen_length,
                                    attention_mask=self.mask, total_steps=self.total_steps)  # fmt: skip

    @torch.no_grad()  # as DiffusionLMPipeline.__call__ (compiled kernels guard on the grad mode)
    def forward(self, step: int) -> torch.Tensor:
        """Notify step `step`, then the pipeline's forward: logits (1, gen_length, V) of the generated positions."""
        from ...attention_processors.dlm_state import dlm_state, notify_dlm_step

        notify_dlm_step(self.model, step, self.total_steps)
        state = dlm_state(self.model)
        self.last_kind = None if state is None else state.kind().value
        start = self.prompt_length
        return self.pipe._block_logits(self.x, None, None, start, start + self.gen_length, self.params)

    def dense(self) -> torch.Tensor:
        """Step 0 of a new generation: dense while full_steps > 0 (and on a model without the engine)."""
        self._start()
        return self.forward(0)

    def pattern(self) -> torch.Tensor:
        """The first sparse step of a new generation: SparseD computes every layer's pattern here."""
        self._start()
        return self.forward(self.first_sparse)

    def sparse(self) -> torch.Tensor:
        """A cached sparse step: the step after the pattern step, in the same generation (patterns reused)."""
        return self.forward(self.first_sparse + 1)


def expected_kinds(mode: str, steps: int, full_steps: float) -> list[str]:
    """The kind of each step of a T-step generation in `mode`: all dense, or SparseD's dense → pattern → sparse."""
    if MODES[mode][0] == "dense":
        return ["dense"] * steps
    n_dense, n_pattern, n_sparse = schedule_counts(steps, full_steps)
    return ["dense"] * n_dense + ["pattern"] * n_pattern + ["sparse"] * n_sparse


def step_kind_from_counts(patterns_added: int, fast: int, masked: int, layers: int) -> str:
    """What a forward was, from the engine's counters (SparseD): dense (no sparse call), pattern, cached sparse."""
    if masked:
        return f"masked-reference×{masked}"
    if fast == 0 and patterns_added == 0:
        return "dense"
    if fast != layers:
        return f"sparse-calls×{fast}"
    if patterns_added == layers:
        return "pattern"
    return "sparse" if patterns_added == 0 else f"patterns×{patterns_added}"

"""`StructuredCrossAttnProcessor`: Structured Diffusion Guidance on one cross-attention module.

Feng et al. 2023, "Training-Free Structured Diffusion Guidance" (arXiv 2212.05032). For a conditional row with the
stack E = [W_p, W̄_1…W̄_k] of structured embeddings (as the module sees them, after any caption projection):

- "average" (the paper's default): keys from W_p only, output = mean_i softmax(QK_pᵀ)·V_i = softmax(QK_pᵀ)·mean_i V_i,
  computed once with the values replaced by mean_i to_v(E_i);
- "conjunction": keys from each E_j, values from the single copy with every phrase spliced in, output = mean_j of the
  attention outputs (to_out is affine, so averaging outputs is averaging the attention results).

The module's own stock processor does every computation (queries, norms, heads, mask, to_out): the structured rows run
it again with `to_v` answering the prepared values, so no model code is copied. The stock output of the whole batch is
kept for every other row, so the unconditional half of a CFG batch and prompts without phrases are bit-identical to
the stock model. Which rows are conditional, and their stacks, come from a `StructuredPlan` set per denoiser call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

MODES = ("average", "conjunction")


@dataclass
class StructuredPlan:
    """Per denoiser call: conditional row index → (stack (1 + k, L, C), single-spliced copy (L, C)), module space."""

    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    batch: int | None = None  # the denoiser call's batch B; a module seeing a batch B·r sees each row r times in place
    # (Latte's spatial blocks: one row per frame, repeat_interleave), so its rows b·r … b·r + r − 1 are row b's


@dataclass
class StructuredState:
    """Shared by the processors of one model: the plan of the denoiser call in progress (None outside one)."""

    plan: StructuredPlan | None = None


class _Answer(torch.nn.Module):
    """Stands in for `to_v` during one stock-processor call: returns fixed values (1, L, C_v) whatever its input."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.to(dtype=x.dtype)


@contextlib.contextmanager
def _values_from(attn: torch.nn.Module, values: torch.Tensor) -> Iterator[None]:
    original = attn.to_v
    attn.to_v = _Answer(values)
    try:
        yield
    finally:
        attn.to_v = original


def _to_v(attn: torch.nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """The module's values of embeddings (n, L, C) → (n, L, C_v), through `norm_cross` when it has one."""
    if getattr(attn, "norm_cross", None):
        embeds = attn.norm_encoder_hidden_states(embeds)
    return attn.to_v(embeds)


def _row(value: object, b: int, batch: int) -> object:
    """Row b of a per-batch tensor argument (kept as a batch of one); other arguments unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[b : b + 1]
    return value


class StructuredCrossAttnProcessor:
    """Cross-attention with structured values (Feng et al. 2023) around a module's stock processor."""

    def __init__(self, processor: object, state: StructuredState, mode: str = "average") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown structured guidance mode {mode!r}; expected one of {', '.join(MODES)}")
        self.processor, self.state, self.mode = processor, state, mode

    def structured_row(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
        stack: torch.Tensor, single: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs,
    ) -> torch.Tensor:  # fmt: skip
        """The structured output of one row: hidden_states (1, N, D), encoder_hidden_states (1, L, C) = W_p."""
        stack = torch.cat([encoder_hidden_states, stack[1:].to(encoder_hidden_states)])  # (1 + k, L, C), W_p as seen
        if self.mode == "average":
            values = _to_v(attn, stack).mean(dim=0, keepdim=True)  # (1, L, C_v)
            with _values_from(attn, values):
                return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        values = _to_v(attn, single[None].to(encoder_hidden_states))  # (1, L, C_v)
        outs = []
        with _values_from(attn, values):
            for j in range(stack.shape[0]):
                outs.append(self.processor(attn, hidden_states, stack[j : j + 1], attention_mask, *args, **kwargs))
        return torch.stack(outs).mean(dim=0)

    def __call__(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, *args, image_rotary_emb: object = None, **kwargs,
    ) -> torch.Tensor:  # fmt: skip
        if image_rotary_emb is not None:  # named, so that diffusers hands it over (Allegro's cross-attention names it)
            kwargs["image_rotary_emb"] = image_rotary_emb
        out = self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)  # stock
        plan = self.state.plan
        if plan is None or not plan.rows or encoder_hidden_states is None:
            return out
        batch = hidden_states.shape[0]
        per = batch // plan.batch if plan.batch and batch % plan.batch == 0 else 1  # module rows per call row
        out = out.clone()
        for b, (stack, single) in plan.rows.items():
            if stack.shape[0] < 2:
                continue
            for r in range(b * per, min((b + 1) * per, batch)):
                row_args = [_row(value, r, batch) for value in args]
                row_kwargs = {key: _row(value, r, batch) for key, value in kwargs.items()}
                out[r : r + 1] = self.structured_row(
                    attn, hidden_states[r : r + 1], encoder_hidden_states[r : r + 1], stack, single,
                    _row(attention_mask, r, batch), *row_args, **row_kwargs,
                )  # fmt: skip
        return out

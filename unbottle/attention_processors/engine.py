"""The engine: one self-attention call = schedule (what kind of step) × pattern (which blocks) × correction (reshape).

`attend` is the one flow both fronts run, the diffusers processors (processor.py) and transformers' attention
interface (transformers_attention.py). It takes q/k/v as the stock attention would get them (after projections,
norms and RoPE, key/value heads expanded), (B, H, N, D), the kind of this step (schedule.StepRule), the layer's
`LayerState` for this CFG branch or generation, and a pattern provider, and returns the output, or None where the
stock dense attention runs. Providers are strategies of the one flow: `DiTPatterns` (text and diagonal blocks forced,
patterns kept per layer and resolution across generations) and `SparseDPatterns` (isolated selection per row,
patterns kept per generation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..families.layout import TokenLayout
from .block_mask import num_blocks, pattern_to_block_mask
from .block_sparse import block_sparse_attention, block_sparse_attention_key_masked, dense_attention_with_lse
from .config import SparseAttentionConfig
from .key_mask import KeyMask, factor_key_mask
from .patterns import (
    block_sizes,
    diagonal_blocks,
    exact_block_importance,
    forced_blocks,
    isolated_selection,
    kept_fraction,
    pooled_scores,
    prompt_boundary,
    select_blocks,
    select_by_coverage,
    sequence_window_scores,
    valid_key_blocks,
    window_scores,
)
from .reference import block_sparse_attention_reference
from .reshape import apply_reshape, capture_statistics
from .schedule import StepKind

_IMPORTANCE_BUDGET = 2**27  # fp32 scores per chunk when pooling exact attention row by row (≈512 MiB)


@dataclass
class LayerState:
    """One layer's state for one CFG branch (diffusers) or one generation (transformers)."""

    rho: torch.Tensor | None = None  # (B, H, N, 1) fp32, Re-ttention (reshape=True only)
    residual: torch.Tensor | None = None  # (B, H, N, D)
    sparse_since_refresh: int = 0
    calls: int = 0  # steps counted by calls, when no clock tells the step
    # patterns that live exactly as long as this state (SparseD: one generation), per (batch, queries, keys)
    patterns: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    block_masks: dict[tuple[int, int, int], Any] = field(default_factory=dict)  # the patterns as BlockMasks


@dataclass
class PatternStore:
    """Patterns shared by all layers of one enable call (DiT: per layer, tokens, block size and grid, across
    generations) and how many times each layer computed a pattern."""

    patterns: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)  # pattern computations per layer (tests count them)
    block_masks: dict = field(default_factory=dict)  # the patterns as FlexAttention BlockMasks, on their device
    forced: dict = field(default_factory=dict)  # (tokens, block size, layout) -> (nQ, nK) always-kept tiles
    densities: dict[tuple, float] = field(default_factory=dict)  # kept-tile fraction of each pattern in `patterns`
    # "dynamic" (patterns made every call, never stored): per (layer, tokens, block size), the kept tiles (a device
    # scalar: no sync per call) and all tiles of the patterns its sparse steps computed
    dynamic: dict[tuple, tuple[torch.Tensor, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class AttentionCall:
    """One self-attention call: q (B, H, Nq, D), k/v (B, H, Nk, D) with key/value heads already expanded."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    mask: torch.Tensor | None = None  # for the attention math (bool or additive), broadcastable to (B, 1, Nq, Nk)
    allowed: torch.Tensor | None = None  # bool "may attend" version of `mask`, for selection among real keys
    key_mask: KeyMask | None = None  # `mask` as its key vector, where it is a padding mask (factored once, in attend)

    @property
    def dense_mask(self) -> torch.Tensor | KeyMask | None:
        """The mask for exact attention: the key vector where there is one (FlexAttention takes it on CUDA)."""
        return self.key_mask if self.key_mask is not None else self.mask


class PatternProvider(Protocol):
    """Where a call's block pattern comes from: made now (from the exact LSE `lse_full` at a refresh) or cached."""

    def block_mask(self, call: AttentionCall, state: LayerState, lse_full: torch.Tensor | None) -> Any: ...


@dataclass
class DiTPatterns:
    """Diffusion transformers: text/conditioning blocks and the diagonal always kept, then the top `density` of key
    blocks — by this call's pooled q·k ("dynamic"), or made once per layer and resolution from block distances in the
    latent grid ("window") or SparseD's exact tile importance ("cached"; with a `coverage`, the fewest blocks per row
    holding that softmax mass) and kept in the shared store with their kept-tile fractions."""

    name: str
    config: SparseAttentionConfig
    store: PatternStore
    layout: TokenLayout

    def _forced(self, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """The always-kept tiles (nQ, nK) and the most of them in one row (a host int: no sync per step)."""
        key = (n, self.config.block_size, self.layout)
        if key not in self.store.forced:
            forced = forced_blocks(self.layout, n, self.config.block_size, device)
            self.store.forced[key] = forced, int(forced.sum(-1).max())
        forced, max_forced = self.store.forced[key]
        return forced.to(device), max_forced

    def block_mask(self, call: AttentionCall, state: LayerState, lse_full: torch.Tensor | None) -> Any:
        """The block mask of this call: dynamic → from this call's pooled q·k; window/cached → made once, reused."""
        cfg, (q, k, v), n = self.config, (call.q, call.k, call.v), call.q.shape[2]
        bs = cfg.block_size
        if cfg.pattern == "dynamic":
            forced, max_forced = self._forced(n, q.device)
            scores = pooled_scores(q, k, bs, call.scale)  # (B, H, nQ, nK)
            indices, counts = select_blocks(scores, forced, cfg.density, max_forced=max_forced)
            if lse_full is None:  # a sparse step (a refresh passes its exact LSE): count the tiles it computes
                dyn = (self.name, n, bs)
                kept, tiles = self.store.dynamic.get(dyn, (0, 0))
                n_tiles = counts.numel() * num_blocks(k.shape[2], bs)  # counts (B, H, nQ)
                self.store.dynamic[dyn] = (kept + counts.sum(dtype=torch.int64), tiles + n_tiles)
            return pattern_to_block_mask(indices, counts, bs, n, k.shape[2])
        (f, h, w), text_len, text_first = self.layout.resolve(n)
        key = (self.name, n, bs, f, h, w, text_len, text_first)  # same token count, other grid: another pattern
        if key not in self.store.patterns:
            if cfg.pattern == "window":
                scores = window_scores(self.layout, n, bs, q.device)
            else:  # cached: SparseD's exact tile importance, once per layer and resolution
                if lse_full is None:  # a sparse step before any refresh (no reshape): one exact pass for the LSE
                    lse_full = dense_attention_with_lse(q, k, v, call.dense_mask, call.scale)[1]
                scores = exact_block_importance(q, k, lse_full, bs, call.scale, attn_mask=call.mask)
            forced, max_forced = self._forced(n, q.device)
            if cfg.coverage is not None:  # cached only: top-p of the tile masses (tile means × tile sizes = sums)
                rows, cols = block_sizes(n, bs, q.device), block_sizes(k.shape[2], bs, q.device)  # (nQ,), (nK,)
                pattern = select_by_coverage(scores * (rows[:, None] * cols[None, :]), forced, cfg.coverage, rows)
            else:
                pattern = select_blocks(scores, forced, cfg.density, max_forced=max_forced)
            self.store.patterns[key] = pattern
            self.store.densities[key] = kept_fraction(pattern[1], num_blocks(k.shape[2], bs))
            self.store.computed[self.name] = self.store.computed.get(self.name, 0) + 1
        mask = self.store.block_masks.get(key)
        if mask is None or mask.kv_num_blocks.device != q.device:
            indices, counts = (t.to(q.device) for t in self.store.patterns[key])
            mask = self.store.block_masks[key] = pattern_to_block_mask(indices, counts, bs, n, k.shape[2])
        return mask


def _rows(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if t is None else (t[i : i + 1] if t.shape[0] > 1 else t)


def _exact_scores(q, k, lse, scale, bs, mask):
    """(1, H, nQ, nK) SparseD tile importance of one row under exact attention (`lse` (1, H, Nq) its row LSE)."""
    lse = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf")))  # rows with no key: mass 0
    chunk = max(bs, _IMPORTANCE_BUDGET // max(1, q.shape[1] * k.shape[2]) // bs * bs)
    return exact_block_importance(q, k, lse, bs, scale, chunk=chunk, attn_mask=mask).nan_to_num(0.0)


@dataclass
class SparseDPatterns:
    """Diffusion LMs, SparseD (Wang et al., 2025): per-row, per-head isolated selection (the prompt's and the
    generated region's key blocks ranked apart, see `isolated_selection`) plus the diagonal block, among the row's
    real key blocks — by exact tile importance ("cached"), pooled q·k ("dynamic") or block distance ("window").
    "cached"/"window" patterns live in the layer's state (one generation) per (batch, queries, keys)."""

    name: str
    config: SparseAttentionConfig
    store: PatternStore  # counts the computations
    notified_mask: torch.Tensor | None  # (B, N) 1 = real token, if notified (selection ignores the rest)
    prompt_lengths: Callable[[int], torch.Tensor | None]  # batch -> (B,) first generated position per row, or None

    def block_mask(self, call: AttentionCall, state: LayerState, lse_full: torch.Tensor | None) -> Any:
        """This call's BlockMask: "cached"/"window" made once per generation and shape, "dynamic" every call."""
        cfg = self.config
        bs = cfg.block_size
        b, h, nq, _ = call.q.shape
        nk = call.k.shape[2]
        key = (b, nq, nk)
        if cfg.pattern != "dynamic" and key in state.patterns:
            mask = state.block_masks.get(key)
            if mask is None or mask.kv_num_blocks.device != call.q.device:
                indices, counts = (t.to(call.q.device) for t in state.patterns[key])
                mask = state.block_masks[key] = pattern_to_block_mask(indices, counts, bs, nq, nk)
            return mask
        device = call.q.device
        valid = valid_key_blocks(call.allowed, self.notified_mask, b, nk, bs, device)  # (B, nK)
        prompts = self.prompt_lengths(b)
        keeps = []
        for i in range(b):
            boundary = prompt_boundary(int(prompts[i]), nk, bs) if prompts is not None else None
            q_i, k_i, v_i, m_i = call.q[i : i + 1], call.k[i : i + 1], call.v[i : i + 1], _rows(call.allowed, i)
            gen = None
            if cfg.pattern == "cached":
                if lse_full is not None:
                    lse = lse_full[i : i + 1]
                else:
                    lse = dense_attention_with_lse(q_i, k_i, v_i, m_i, call.scale)[1]
                scores = _exact_scores(q_i, k_i, lse, call.scale, bs, m_i)
                if boundary is not None:  # the generated region's own softmax (SparseD's second pass)
                    g0 = boundary * bs
                    m_g = None if m_i is None else m_i[..., g0:]
                    lse_g = dense_attention_with_lse(q_i, k_i[:, :, g0:], v_i[:, :, g0:], m_g, call.scale)[1]
                    gen = F.pad(_exact_scores(q_i, k_i[:, :, g0:], lse_g, call.scale, bs, m_g), (boundary, 0))
            elif cfg.pattern == "dynamic":
                scores = pooled_scores(q_i, k_i, bs, call.scale)
            else:
                scores = sequence_window_scores(nq, nk, bs, device).expand(1, h, -1, -1)
            keeps.append(isolated_selection(scores[0], None if gen is None else gen[0], valid[i], boundary,
                                            cfg.density))  # fmt: skip
        keep = torch.stack(keeps) | diagonal_blocks(nq, nk, bs, device)  # (B, H, nQ, nK)
        indices, counts = select_blocks(keep.float(), keep, 0.0, max_forced=int(keep.sum(-1).max()))  # kept first
        self.store.computed[self.name] = self.store.computed.get(self.name, 0) + 1
        mask = pattern_to_block_mask(indices, counts, bs, nq, nk)
        if cfg.pattern != "dynamic":
            state.patterns[key] = (indices, counts)
            state.block_masks[key] = mask
        return mask


# (fast, masked) of `block_sparse_kernels`, None: the engine's own
_KERNELS: ContextVar[tuple[Callable | None, Callable | None]] = ContextVar("kernels", default=(None, None))


@contextmanager
def block_sparse_kernels(fast: Callable | None = None, masked: Callable | None = None) -> Iterator[None]:
    """Within the block, run the engine's mask-free block-sparse calls on `fast` and those with a mask on `masked`
    (the signatures of `block_sparse_attention` and `block_sparse_attention_reference`; None: the engine's own)."""
    token = _KERNELS.set((fast, masked))
    try:
        yield
    finally:
        _KERNELS.reset(token)


def run_block_sparse(call: AttentionCall, block_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention of `call` over `block_mask`: (out (B, H, Nq, D), lse (B, H, Nq))."""
    fast, masked = _KERNELS.get()
    if call.key_mask is not None and masked is None:  # padding: FlexAttention takes the key vector as a bias
        return block_sparse_attention_key_masked(call.q, call.k, call.v, block_mask, call.key_mask, scale=call.scale)
    if call.mask is not None:  # other masks (causality, per head): the reference honours them
        return (masked or block_sparse_attention_reference)(call.q, call.k, call.v, block_mask, scale=call.scale,
                                                            attn_mask=call.mask)  # fmt: skip
    return (fast or block_sparse_attention)(call.q, call.k, call.v, block_mask, scale=call.scale, return_lse=True)


def attend(
    call: AttentionCall, kind: StepKind, state: LayerState, patterns: PatternProvider, config: SparseAttentionConfig
) -> torch.Tensor | None:
    """This call's output (B, H, Nq, D): None on a dense step (the stock attention runs), the exact output on a
    refresh step (ρ and R captured), block-sparse attention (+ Re-ttention's reshape) on a sparse step."""
    if kind is StepKind.DENSE or num_blocks(call.k.shape[2], config.block_size) < 2:
        return None  # one block: sparse is dense
    key_mask = factor_key_mask(call.mask, call.q.shape[0], call.q.shape[2], call.k.shape[2])
    if key_mask is None:
        return _attend(call, kind, state, patterns, config)
    # a padding mask (e.g. HunyuanVideo-1.5's (B, 1, N, N) text mask) runs as its key vector; rows with no key are 0
    keys = KeyMask(key_mask.keys)  # the rows with no key are zeroed once, here
    out = _attend(replace(call, mask=keys.as_attn_mask(), key_mask=keys), kind, state, patterns, config)
    return key_mask.zero_empty_rows(out)


def _attend(
    call: AttentionCall, kind: StepKind, state: LayerState, patterns: PatternProvider, config: SparseAttentionConfig
) -> torch.Tensor:
    stale = state.rho is None or state.rho.shape[:3] != call.q.shape[:3]
    if kind is StepKind.SPARSE and config.reshape and stale:
        kind = StepKind.REFRESH  # no statistics for this shape yet (first call, new resolution): capture them
    if kind is StepKind.REFRESH:
        out_full, lse_full = dense_attention_with_lse(call.q, call.k, call.v, call.dense_mask, call.scale)
        out_sparse, lse_sparse = run_block_sparse(call, patterns.block_mask(call, state, lse_full))
        state.rho, state.residual = capture_statistics(out_full, lse_full, out_sparse, lse_sparse)
        state.sparse_since_refresh = 0
        return out_full
    out, _ = run_block_sparse(call, patterns.block_mask(call, state, None))
    if config.reshape:
        out = apply_reshape(out, state.rho, state.residual, config.rho_growth, state.sparse_since_refresh)
        state.sparse_since_refresh += 1
    return out

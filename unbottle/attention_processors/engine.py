"""The engine: one self-attention call = schedule (what kind of step) × pattern (which blocks) × correction (reshape).

`SparseLayer.attend` receives q/k/v exactly as the stock processor hands them to scaled-dot-product attention
(after projections, QK-norm and RoPE), (B, H, N, D), and returns the output or None to let the stock SDPA run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .block_mask import num_blocks, pattern_to_block_mask
from .block_sparse import block_sparse_attention, dense_attention_with_lse
from .config import SparseAttentionConfig
from .layout import TokenLayout
from .patterns import exact_block_importance, forced_blocks, pooled_scores, select_blocks, window_scores
from .reference import block_sparse_attention_reference
from .reshape import apply_reshape, capture_statistics
from .schedule import StepKind, step_kind
from .state import CURRENT_FORWARD, ForwardInfo, LayerState, LayerStateHook, ModelClockHook, PatternStore

ASSUMED_NUM_STEPS = 50  # for a fractional `full_steps` when nothing tells the number of steps (drop-in, no clock)


@dataclass
class SparseLayer:
    """One sparse self-attention layer: its name, its per-branch statistics hook, the shared config and patterns."""

    name: str
    config: SparseAttentionConfig
    hook: LayerStateHook
    store: PatternStore
    clock: ModelClockHook | None = None  # drop-in form: the clock attached mid-forward holds that forward's info
    _warned: bool = False

    # -- schedule ---------------------------------------------------------------------------------------------------
    def _kind(self, info: ForwardInfo | None, state: LayerState) -> StepKind:
        cfg = self.config
        if info is None:  # no denoiser clock (drop-in processor): steps are this layer's calls
            step, num_steps = state.calls, None
        else:
            step, num_steps = info.step, info.num_steps
        full = cfg.num_full_steps(num_steps)
        if full is None and info is not None and info.timestep is not None:
            if info.full_until is None:  # still above the timestep threshold of the full phase
                return StepKind.DENSE
            full = info.full_until + (1 if cfg.reshape else 0)
        if full is None:
            if not self._warned:
                warnings.warn(
                    f"unbottle sparse attention: full_steps={cfg.full_steps} is a fraction but the number of steps is "
                    f"unknown here; assuming {ASSUMED_NUM_STEPS}. Give full_steps as a count, or use "
                    "unbottle.enable_sparse_attention(pipe, config).",
                    stacklevel=4,
                )
                self._warned = True
            full = cfg.num_full_steps(ASSUMED_NUM_STEPS)
        return step_kind(step, full, cfg.refresh_every, needs_statistics=cfg.reshape)

    # -- patterns ---------------------------------------------------------------------------------------------------
    def _forced(self, layout, n, device) -> tuple[torch.Tensor, int]:
        """The always-kept tiles (nQ, nK) and the most of them in one row (a host int: no sync per step)."""
        key = (n, self.config.block_size, layout)
        if key not in self.store.forced:
            forced = forced_blocks(layout, n, self.config.block_size, device)
            self.store.forced[key] = forced, int(forced.sum(-1).max())
        forced, max_forced = self.store.forced[key]
        return forced.to(device), max_forced

    def _pattern(self, q, k, v, scale, layout, lse_full=None, attn_mask=None):
        """The block mask of this call: dynamic → from this step's pooled q·k; window/cached → made once, reused."""
        cfg, n = self.config, q.shape[2]
        bs = cfg.block_size
        if cfg.pattern == "dynamic":
            forced, max_forced = self._forced(layout, n, q.device)
            scores = pooled_scores(q, k, bs, scale)  # (B, H, nQ, nK)
            indices, counts = select_blocks(scores, forced, cfg.density, max_forced=max_forced)
            return pattern_to_block_mask(indices, counts, bs, n, k.shape[2])
        (f, h, w), text_len, text_first = layout.resolve(n)
        key = (self.name, n, bs, f, h, w, text_len, text_first)  # same token count, other grid: another pattern
        if key not in self.store.patterns:
            if cfg.pattern == "window":
                scores = window_scores(layout, n, bs, q.device)
            else:  # cached: SparseD's exact tile importance, once per layer and resolution
                if lse_full is None:  # a sparse step before any refresh (no reshape): one exact pass for the LSE
                    lse_full = dense_attention_with_lse(q, k, v, attn_mask, scale)[1]
                scores = exact_block_importance(q, k, lse_full, bs, scale, attn_mask=attn_mask)
            forced, max_forced = self._forced(layout, n, q.device)
            self.store.patterns[key] = select_blocks(scores, forced, cfg.density, max_forced=max_forced)
            self.store.computed[self.name] = self.store.computed.get(self.name, 0) + 1
        mask = self.store.block_masks.get(key)
        if mask is None or mask.kv_num_blocks.device != q.device:
            indices, counts = (t.to(q.device) for t in self.store.patterns[key])
            mask = self.store.block_masks[key] = pattern_to_block_mask(indices, counts, bs, n, k.shape[2])
        return mask

    def _sparse(self, q, k, v, block_mask, scale, attn_mask):
        if attn_mask is not None:  # the fast paths take no extra mask yet: the reference honours it
            return block_sparse_attention_reference(q, k, v, block_mask, scale=scale, attn_mask=attn_mask)
        return block_sparse_attention(q, k, v, block_mask, scale=scale, return_lse=True)

    # -- one call ---------------------------------------------------------------------------------------------------
    def attend(self, q, k, v, attn_mask=None, scale=None) -> torch.Tensor | None:
        """Sparse attention for this call, or None when this step runs the stock dense SDPA."""
        cfg = self.config
        if cfg.density >= 1.0:
            return None  # every block: the stock SDPA is the exact and fastest answer
        info = CURRENT_FORWARD.get()
        if info is None and self.clock is not None:
            info = self.clock.pending
        state = self.hook.state()
        kind = self._kind(info, state)
        state.calls += 1
        if kind is StepKind.DENSE:
            return None
        n = q.shape[2]
        if num_blocks(n, cfg.block_size) < 2:
            return None  # one block: sparse is dense
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        layout = (info.layout if info is not None else None) or TokenLayout()
        stale = state.rho is None or state.rho.shape[:3] != q.shape[:3]
        if kind is StepKind.SPARSE and cfg.reshape and stale:
            kind = StepKind.REFRESH  # no statistics for this shape yet (first call, new resolution): capture them
        if kind is StepKind.REFRESH:
            out_full, lse_full = dense_attention_with_lse(q, k, v, attn_mask, scale)
            if cfg.reshape:
                pattern = self._pattern(q, k, v, scale, layout, lse_full, attn_mask)
                out_sparse, lse_sparse = self._sparse(q, k, v, pattern, scale, attn_mask)
                state.rho, state.residual = capture_statistics(out_full, lse_full, out_sparse, lse_sparse)
                state.sparse_since_refresh = 0
            elif cfg.pattern == "cached":
                self._pattern(q, k, v, scale, layout, lse_full, attn_mask)
            return out_full
        out_sparse, _ = self._sparse(q, k, v, self._pattern(q, k, v, scale, layout, None, attn_mask), scale, attn_mask)
        if cfg.reshape:
            out = apply_reshape(out_sparse, state.rho, state.residual, cfg.rho_growth, state.sparse_since_refresh)
            state.sparse_since_refresh += 1
            return out
        return out_sparse


def density_of(indices: torch.Tensor, counts: torch.Tensor, n_kv_blocks: int) -> float:
    """Fraction of (query block, key block) tiles a pattern computes."""
    return float(counts.float().mean()) / n_kv_blocks if n_kv_blocks else math.nan

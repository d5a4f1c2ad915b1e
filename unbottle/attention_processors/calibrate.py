"""Calibrated sparse-attention budgets: cached patterns (SparseD) that keep a softmax-mass target instead of a density.

`calibrate_sparse_attention` runs the pipeline on a few prompts with `SparseAttentionConfig(coverage=...)`: at the
first refresh (without reshape, the first sparse) step of each layer, every (head, query block) row keeps the fewest
key blocks whose exact softmax mass reaches the coverage. Several prompts combine as the union of their kept tiles
(per layer and resolution): each prompt's rows then keep at least the coverage on that prompt, which an average of
the masses would only promise on average. The union is written with `save_head_patterns` and its realized density
returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from .block_mask import num_blocks
from .config import SparseAttentionConfig
from .enable import disable_sparse_attention, enable_sparse_attention
from .handle import PipelineSparseAttention, SparseAttentionHandle
from .pattern_files import save_head_patterns
from .patterns import kept_fraction, select_blocks


def union_patterns(
    patterns: Sequence[tuple[torch.Tensor, torch.Tensor]], n_kv_blocks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles any of `patterns` keeps, as one (indices (B, H, nQ, K), counts (B, H, nQ)); all of one (B, H, nQ)."""
    keep = None
    for indices, counts in patterns:
        slots = torch.arange(indices.shape[-1], device=indices.device) < counts[..., None]  # (B, H, nQ, K) kept
        spill = torch.where(slots, indices.long(), n_kv_blocks)  # slots past the count go to one extra column
        tiles = torch.zeros(*counts.shape, n_kv_blocks + 1, dtype=torch.bool, device=indices.device)
        tiles = tiles.scatter_(-1, spill, True)[..., :n_kv_blocks]  # (B, H, nQ, nK)
        keep = tiles if keep is None else keep | tiles
    if keep is None:
        raise ValueError("union_patterns needs at least one pattern")
    return select_blocks(keep.float(), keep, 0.0, max_forced=int(keep.sum(-1).max()))  # the kept tiles first


def _clear(handle: SparseAttentionHandle) -> None:
    handle.store.patterns.clear()
    handle.store.block_masks.clear()
    handle.store.densities.clear()
    handle.reset()


def calibrate_sparse_attention(
    pipe: object,
    prompts: str | Sequence[str],
    coverage: float = 0.95,
    *,
    path: str | Path,
    config: SparseAttentionConfig | None = None,
    **call_kwargs: object,
) -> float:
    """Make "cached" patterns that keep `coverage` of each row's softmax mass on `prompts`, write them to `path`
    (`save_head_patterns`) and return their realized density (kept tiles / all tiles, averaged over the layers).

    `config` gives the rest of the configuration (block size, schedule; default `SparseAttentionConfig()`), its
    pattern and coverage replaced; `call_kwargs` go to every pipeline call (`num_inference_steps`, `height`, ...).
    The pattern is made at the first refresh step (the last of the `full_steps` dense steps; without reshape the first
    sparse step), so calibrate with the steps you will generate with. Sparse attention is disabled again on return.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts must be one or more non-empty strings, got {prompts!r}")
    if config is not None and not isinstance(config, SparseAttentionConfig):
        raise TypeError(f"config must be an unbottle.SparseAttentionConfig or None, got {type(config).__name__}")
    cfg = dataclasses.replace(config or SparseAttentionConfig(), coverage=coverage, pattern="cached")  # validated
    if not isinstance(path, (str, Path)) or not str(path):
        raise ValueError(f"path must be a file path (e.g. patterns.safetensors), got {path!r}")
    if Path(path).is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file path (e.g. patterns.safetensors)")
    enabled = enable_sparse_attention(pipe, cfg)
    handles = list(enabled.handles.values()) if isinstance(enabled, PipelineSparseAttention) else [enabled]
    try:
        found: list[dict[tuple, list]] = [{} for _ in handles]  # per denoiser: pattern key -> one pattern per prompt
        for prompt in prompts:
            for handle in handles:
                _clear(handle)  # every prompt makes its own patterns
            pipe(prompt, **call_kwargs)
            for handle, patterns in zip(handles, found, strict=True):
                for key, pattern in handle.store.patterns.items():
                    patterns.setdefault(key, []).append(pattern)
        if not any(found):
            raise ValueError(
                f"calibration made no pattern: every step was dense (num_inference_steps="
                f"{call_kwargs.get('num_inference_steps', 'the pipeline default')}, full_steps={cfg.full_steps}); "
                "run at least one step past the dense ones"
            )
        for handle, patterns in zip(handles, found, strict=True):
            _clear(handle)
            for key, kept in patterns.items():  # key: (layer, tokens, block size, ...), self-attention
                n_kv = num_blocks(key[1], key[2])
                handle.store.patterns[key] = kept[0] if len(kept) == 1 else union_patterns(kept, n_kv)
                handle.store.densities[key] = kept_fraction(handle.store.patterns[key][1], n_kv)
        save_head_patterns(pipe, path)
        density = enabled.realized_density
    finally:
        disable_sparse_attention(pipe)
    return float(density)

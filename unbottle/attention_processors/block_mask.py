"""Kept-block lists ↔ FlexAttention `BlockMask`: every kept tile is marked *full*, so no mask_mod runs per element.

A pattern is `(indices, counts)`: `indices` (B, H, nQ, K) int32 lists, per query block, the kept key blocks in its
first `counts` (B, H, nQ) entries (B and H may be 1 to broadcast); the rest of each row is padding.
"""

from __future__ import annotations

import math

import torch
from torch.nn.attention.flex_attention import BlockMask


def num_blocks(length: int, block_size: int) -> int:
    """Blocks covering `length` tokens (the last one may be partial)."""
    return math.ceil(length / block_size)


def pattern_to_block_mask(
    indices: torch.Tensor, counts: torch.Tensor, block_size: int, q_len: int, kv_len: int
) -> BlockMask:
    """A `BlockMask` whose kept tiles are full blocks (no per-element mask_mod), from kept-block lists."""
    b, h, n_q, _ = indices.shape
    n_k = num_blocks(kv_len, block_size)
    full_indices = torch.zeros(b, h, n_q, n_k, dtype=torch.int32, device=indices.device)
    width = min(indices.shape[-1], n_k)
    full_indices[..., :width] = indices[..., :width].to(torch.int32)
    empty = torch.zeros(b, h, n_q, dtype=torch.int32, device=indices.device)
    return BlockMask.from_kv_blocks(
        empty, torch.zeros_like(full_indices), full_kv_num_blocks=counts.to(torch.int32), full_kv_indices=full_indices,
        BLOCK_SIZE=block_size, seq_lengths=(q_len, kv_len), compute_q_blocks=False,
    )  # fmt: skip


def kept_blocks(block_mask: BlockMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept key blocks of a BlockMask (partial and full tiles) as `(indices, valid, partial)`, each (B, H, nQ, K)."""
    parts = [(block_mask.kv_num_blocks, block_mask.kv_indices, True)]
    if block_mask.full_kv_num_blocks is not None:
        parts.append((block_mask.full_kv_num_blocks, block_mask.full_kv_indices, False))
    indices, valid, partial = [], [], []
    for count, idx, is_partial in parts:
        slots = torch.arange(idx.shape[-1], device=idx.device)
        ok = slots < count[..., None]  # (B, H, nQ, K)
        indices.append(idx.long())
        valid.append(ok)
        partial.append(torch.full_like(ok, is_partial))
    return torch.cat(indices, -1), torch.cat(valid, -1), torch.cat(partial, -1)


def dense_block_mask(block_mask: BlockMask, q_len: int | None = None, kv_len: int | None = None) -> torch.Tensor:
    """The boolean (B, H, q_len, kv_len) token mask a BlockMask stands for (tests and small inputs only)."""
    seq_q, seq_k = block_mask.seq_lengths
    q_len, kv_len = q_len or seq_q, kv_len or seq_k
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    indices, valid, partial = kept_blocks(block_mask)
    b, h, n_q, _ = indices.shape
    n_k = num_blocks(kv_len, kv_bs)
    tiles = torch.zeros(b, h, n_q, n_k + 1, dtype=torch.bool, device=indices.device)
    full_tiles = tiles.clone()
    spill = torch.where(valid, indices.clamp(max=n_k - 1), torch.full_like(indices, n_k))  # invalid → spare column
    tiles.scatter_(-1, spill, True)
    full_tiles.scatter_(-1, torch.where(partial, torch.full_like(spill, n_k), spill), True)
    tiles, full_tiles = tiles[..., :n_k], full_tiles[..., :n_k]
    dense = tiles.repeat_interleave(q_bs, 2).repeat_interleave(kv_bs, 3)[:, :, :q_len, :kv_len]
    full = full_tiles.repeat_interleave(q_bs, 2).repeat_interleave(kv_bs, 3)[:, :, :q_len, :kv_len]
    if (dense & ~full).any():  # partial tiles: the mask_mod decides per element
        bi = torch.arange(b, device=dense.device).view(b, 1, 1, 1)
        hi = torch.arange(h, device=dense.device).view(1, h, 1, 1)
        qi = torch.arange(q_len, device=dense.device).view(1, 1, q_len, 1)
        ki = torch.arange(kv_len, device=dense.device).view(1, 1, 1, kv_len)
        dense = full | (dense & block_mask.mask_mod(bi, hi, qi, ki).bool())
    return dense

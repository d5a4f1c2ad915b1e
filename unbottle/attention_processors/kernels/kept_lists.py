"""A FlexAttention `BlockMask` as one packed list of kept key blocks per (batch, head, query block).

The packaged Hopper kernels (cuDNN frontend's block-sparse attention, FlashAttention-4) take every kept tile whole
from one list: `indices` (B, H, nQ, K) int32 whose first `counts` (B, H, nQ) entries are the kept key blocks. A
BlockMask keeps two lists, partial tiles (`kv_num_blocks`/`kv_indices`, where a mask_mod decides per element) and full
tiles (`full_kv_*`). Only FlexAttention's no-op mask_mod keeps partial tiles whole, so only then are the two lists
one set of whole tiles: partial entries first, then full ones. B and H broadcast (size 1) are expanded, as the
kernels want every (batch, head) row.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, noop_mask


def whole_tiles(block_mask: BlockMask) -> bool:
    """Whether every kept tile of `block_mask` is kept whole: its partial tiles run FlexAttention's no-op mask_mod."""
    return block_mask.full_kv_num_blocks is None or block_mask.mask_mod is noop_mask or (
        block_mask.kv_indices.shape[-1] == 0
    )


def packed_kept_lists(block_mask: BlockMask, batch: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, H, nQ, K) int32 contiguous, counts (B, H, nQ) int32): each query block's kept key blocks, partial
    tiles then full tiles, packed at the front of its row (the rest of the row is 0). ValueError when a partial tile
    is under a real mask_mod (its elements are not all kept)."""
    if not whole_tiles(block_mask):
        raise ValueError("the BlockMask has partial tiles under a mask_mod; these kernels keep whole tiles only")
    parts = [(block_mask.kv_num_blocks, block_mask.kv_indices)]
    if block_mask.full_kv_num_blocks is not None:
        parts.append((block_mask.full_kv_num_blocks, block_mask.full_kv_indices))
    shape = (batch, heads, block_mask.kv_num_blocks.shape[2])
    counts = [c.to(torch.int32).expand(shape) for c, _ in parts]  # (B, H, nQ) each
    lists = [i.to(torch.int32).expand(*shape, i.shape[-1]) for _, i in parts]  # (B, H, nQ, K_j) each
    if len(parts) == 1:
        return lists[0].contiguous(), counts[0].contiguous()
    indices = torch.cat(lists, -1)  # (B, H, nQ, K1 + K2): partial slots, then full slots
    valid = torch.cat([torch.arange(i.shape[-1], device=i.device) < c[..., None]
                       for c, i in zip(counts, lists, strict=True)], -1)  # fmt: skip
    front = (~valid).to(torch.int32).argsort(dim=-1, stable=True)  # valid entries first, in their order
    count = counts[0] + counts[1]  # (B, H, nQ)
    packed = indices.gather(-1, front)
    slots = torch.arange(packed.shape[-1], device=packed.device)
    return torch.where(slots < count[..., None], packed, 0).to(torch.int32).contiguous(), count.contiguous()

"""Block-sparse attention on FlashAttention-4 (`flash-attn-4`, the `hopper` extra): its CuTe DSL forward for SM90 and
SM100 takes per-(batch, head, query block) lists of full key tiles, as a BlockMask keeps them.

`flash_attn.cute.flash_attn_func(..., block_sparse_tensors=...)` runs on (B, N, H, D) views of our (B, H, N, D)
tensors (free for diffusers' tensors, which are (B, N, H, D) in memory) and gives a natural-log LSE. FlexAttention's
`kernel_options={"BACKEND": "FLASH"}` is not a way in: under torch 2.11 on an H100 its output ignored the block mask
(relative error 0.9 against the reference), so it is not offered.
"""

from __future__ import annotations

import weakref

import torch
from torch.nn.attention.flex_attention import BlockMask

from .kept_lists import packed_kept_lists
from .optional import device_refusal, importable

BLOCK_SIZE = 128  # FlashAttention-4's sparse tile on SM90 (query and key)
_TENSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockMask -> {(B, H): BlockSparseTensorsTorch}


def available() -> bool:
    """Whether FlashAttention-4's CuTe DSL interface imports here."""
    return importable("flash_attn.cute", "flash_attn_func") and importable(
        "flash_attn.cute.block_sparsity", "BlockSparseTensorsTorch"
    )


def refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> str | None:
    """Why these inputs do not run here (None: they do)."""
    why = device_refusal(q, k, v, (9, 10, 11), "SM90-SM110")
    if why is not None:
        return why
    if tuple(block_mask.BLOCK_SIZE) != (BLOCK_SIZE, BLOCK_SIZE):
        return f"its sparse tiles are {BLOCK_SIZE} × {BLOCK_SIZE} tokens, got {block_mask.BLOCK_SIZE}"
    if q.shape[-1] % 8 or v.shape[-1] % 8 or not (8 <= q.shape[-1] <= 128 and 8 <= v.shape[-1] <= 128):
        return f"its head sizes are multiples of 8 up to 128, got {q.shape[-1]} and {v.shape[-1]}"
    return None


def ascending_lists(indices: torch.Tensor, counts: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Each row's first `counts` kept key tiles in ascending order, zero after, widened to `n_kv` (B, H, nQ, n_kv)
    int32. The kernel walks a row's list from its end and masks the key length only in the first tile it meets, which
    must be the last (partial) key tile where a row keeps it."""
    width = min(n_kv, indices.shape[-1])
    padding = torch.arange(width, device=indices.device) >= counts[..., None]  # (B, H, nQ, K)
    ascending = indices[..., :width].masked_fill(padding, n_kv).sort(-1).values.masked_fill(padding, 0)
    full = torch.zeros(*indices.shape[:3], n_kv, dtype=torch.int32, device=indices.device)  # (B, H, nQ, n_kv)
    full[..., :width] = ascending
    return full


def _sparse_tensors(block_mask: BlockMask, batch: int, heads: int) -> object:
    """The kept tiles as FlashAttention-4's full-tile lists (no partial tiles), made once per mask and (B, H)."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    per_mask = _TENSORS.setdefault(block_mask, {})
    if (batch, heads) not in per_mask:
        indices, counts = packed_kept_lists(block_mask, batch, heads)  # (B, H, nQ, K), (B, H, nQ)
        n_kv = -(-block_mask.seq_lengths[1] // BLOCK_SIZE)
        full = ascending_lists(indices, counts, n_kv)  # (B, H, nQ, nK)
        per_mask[(batch, heads)] = BlockSparseTensorsTorch(
            mask_block_cnt=torch.zeros_like(counts), mask_block_idx=torch.zeros_like(full), full_block_cnt=counts,
            full_block_idx=full, block_size=(BLOCK_SIZE, BLOCK_SIZE),
        )  # fmt: skip
    return per_mask[(batch, heads)]


def block_sparse_attention_flash4(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention (B, H, Nq, Dv) and natural-log LSE (B, H, Nq) fp32 over a BlockMask's kept tiles on
    FlashAttention-4 (Zadouri et al., 2026). ValueError where it cannot run these inputs."""
    why = refusal(q, k, v, block_mask)
    if why is not None:
        raise ValueError(f"FlashAttention-4 block-sparse attention cannot run this call: {why}")
    from flash_attn.cute import flash_attn_func

    tensors = _sparse_tensors(block_mask, q.shape[0], q.shape[1])
    q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, H, D) views
    out, lse = flash_attn_func(q_, k_, v_, softmax_scale=scale, block_sparse_tensors=tensors, return_lse=True)
    return out.transpose(1, 2), lse.float().reshape(q.shape[:3])  # (B, H, Nq, Dv), (B, H, Nq)

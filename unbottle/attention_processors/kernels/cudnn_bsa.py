"""Block-sparse attention on cuDNN frontend's CuTe DSL kernels (`nvidia-cudnn-frontend` ≥ 1.32, the `hopper` extra).

`cudnn.block_sparse_attention_forward` runs non-causal attention over per-(batch, head, query block) lists of kept key
blocks of 64 or 128 tokens, with a natural-log LSE; on SM90 (Hopper) it is a warp-specialized kernel whose two
consumer warpgroups take turns on the tensor cores. This adapter feeds it a FlexAttention `BlockMask`'s kept tiles
(`kept_lists.packed_kept_lists`) with per-row counts, lets empty rows give output 0 and LSE -inf (our convention),
and refuses, with a ValueError naming the limit, what the kernels do not take.
"""

from __future__ import annotations

import weakref

import torch
from torch.nn.attention.flex_attention import BlockMask

from .kept_lists import packed_kept_lists
from .optional import device_refusal, importable

BLOCK_SIZES = (64, 128)  # tokens per sparse block (query and key alike)
HEAD_DIMS = (64, 96, 128)  # SM90 forward: QK and V head sizes
_LISTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockMask -> {(B, H): (indices, counts)}


def available() -> bool:
    """Whether cuDNN frontend's block-sparse attention imports here (with the CuTe DSL it runs on)."""
    return importable("cudnn.block_sparse_attention", "block_sparse_attention_forward")


def refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> str | None:
    """Why these inputs do not run here (None: they do)."""
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    why = device_refusal(q, k, v, (9, 10, 11, 12), "SM90-SM120")
    if why is not None:
        return why
    if q_bs != kv_bs or q_bs not in BLOCK_SIZES:
        return f"its blocks are {BLOCK_SIZES} tokens (query = key), got {block_mask.BLOCK_SIZE}"
    if q.shape[-1] not in HEAD_DIMS or v.shape[-1] not in HEAD_DIMS:
        return f"its head sizes are {HEAD_DIMS}, got {q.shape[-1]} and {v.shape[-1]}"
    if q_bs == 64 and q.shape[2] % 64:
        return f"64-token blocks need a query length that is a multiple of 64, got {q.shape[2]}"
    if any(t.stride(-1) != 1 or t.data_ptr() % 16 or any(s % 8 for s in t.stride()[:-1]) for t in (q, k, v)):
        return "it needs 16-byte aligned rows"
    return None


def _lists(block_mask: BlockMask, batch: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask's packed lists (B, H, nQ, K), (B, H, nQ), made once per mask and (B, H)."""
    per_mask = _LISTS.setdefault(block_mask, {})
    if (batch, heads) not in per_mask:
        per_mask[(batch, heads)] = packed_kept_lists(block_mask, batch, heads)
    return per_mask[(batch, heads)]


def block_sparse_attention_cudnn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention (B, H, Nq, Dv) and natural-log LSE (B, H, Nq) fp32 over a BlockMask's kept tiles, on
    cuDNN frontend's SM90 kernel (FlashAttention-3's warp specialization, Shah et al. 2024). ValueError where it
    cannot run these inputs."""
    why = refusal(q, k, v, block_mask)
    if why is not None:
        raise ValueError(f"cuDNN block-sparse attention cannot run this call: {why}")
    from cudnn.block_sparse_attention import block_sparse_attention_forward

    indices, counts = _lists(block_mask, q.shape[0], q.shape[1])  # (B, H, nQ, K), (B, H, nQ)
    result = block_sparse_attention_forward(
        q, k, v, indices, None, None, counts, sparse_block_size=block_mask.BLOCK_SIZE[0], allow_empty_block_nums=True,
        softmax_scale=scale, layout="bhsd", kv_splits=1,
    )  # fmt: skip
    return result["o_tensor"], result["lse_tensor"].float().reshape(q.shape[:3])

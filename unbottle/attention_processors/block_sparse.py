"""`block_sparse_attention`: attention over the kept tiles of a FlexAttention `BlockMask`, with log-sum-exps.

CPU runs the PyTorch reference; CUDA runs compiled FlexAttention (eager FlexAttention ignores full-tile block
structure, see notes), and the Triton kernel of issue #5 plugs in behind this same function.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .reference import block_sparse_attention_reference

_compiled_flex = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None):
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    out, lse = _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
    return out, lse


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None,
    return_lse: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Block-sparse attention (B, H, N, D) over a FlexAttention BlockMask, as in FlashAttention-2's tiling (Dao, 2023).

    Returns the output and, with `return_lse`, the natural-log log-sum-exp of each row's kept scores (B, H, Nq).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape[:-1] + (k.shape[-1],) or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v shapes do not match: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    seq_q, seq_k = block_mask.seq_lengths
    if (seq_q, seq_k) != (q.shape[2], k.shape[2]):
        raise ValueError(f"block_mask covers {(seq_q, seq_k)} tokens but q, k have {(q.shape[2], k.shape[2])}")
    if q.is_cuda:
        out, lse = _flex(q, k, v, block_mask, scale)
    else:
        out, lse = block_sparse_attention_reference(q, k, v, block_mask, scale=scale)
    return (out, lse) if return_lse else out

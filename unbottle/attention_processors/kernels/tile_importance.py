"""SparseD's tile importance in one pass: each (query block, key block) tile's softmax mass, no score matrix.

SparseD (Wang et al., 2025) picks each head's kept blocks from the exact attention of one full step: the mean
probability p = exp(q·kᵀ·scale − LSE_row) over every tile. `patterns.exact_block_importance` computes it in PyTorch,
chunk by chunk, through an fp32 (chunk × N) score matrix — at 64k tokens that pass, not the attention, is most of the
pattern step (bench/results/dlm-h200.md). Here one program per (query block, batch·head) keeps its query rows on chip
and walks the key tiles: Q·Kᵀ on the tensor cores, exp2 against the rows' LSE, and one fp32 sum per tile written out
(B, H, nQ, nK). Half the FLOPs of an attention forward (no P·V) and no (N × N) traffic. The PyTorch function stays the
reference and the CPU path; sequence tails are masked per token (rows past Nq add nothing, keys past Nk score -inf).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRETED, LOG2E


@triton.jit(do_not_specialize=["n_q", "n_kv", "n_kv_blocks", "stride_lb", "stride_lh", "stride_ob", "stride_oh",
                               "stride_oq"])  # fmt: skip
def _tile_importance_kernel(
    q_ptr, k_ptr, lse_ptr, out_ptr,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_lb, stride_lh, stride_ob, stride_oh, stride_oq,
    num_heads, n_q, n_kv, n_kv_blocks, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """One (query block, batch·head) program: the summed probability of each of its key tiles."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_heads
    off_h = pid_bh % num_heads
    offs_m = pid_m * BS + tl.arange(0, BS)  # (BS,)
    offs_d = tl.arange(0, BLOCK_D)
    rows_ok = offs_m < n_q
    d_ok = offs_d < HEAD_DIM
    q_base = q_ptr + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = k_ptr + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=rows_ok[:, None] & d_ok[None, :],
                other=0.0)  # (BS, BLOCK_D)
    if UPCAST_DOT:  # the interpreter multiplies bf16 bit patterns as integers: dot in fp32 there
        q = q.to(tl.float32)
    l_base = lse_ptr + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
    # rows past Nq: LSE +inf, so their probabilities are exactly 0
    lse2 = tl.load(l_base + offs_m, mask=rows_ok, other=float("inf")).to(tl.float32) * 1.4426950408889634
    o_base = out_ptr + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + pid_m * stride_oq
    offs_sub = tl.arange(0, BLOCK_N)
    for kb in range(0, n_kv_blocks):
        mass = tl.zeros([BS], dtype=tl.float32)  # per query row, over this key block
        for sub in range(0, BS // BLOCK_N):
            offs_n = kb * BS + sub * BLOCK_N + offs_sub  # (BLOCK_N,)
            keys_ok = offs_n < n_kv
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=keys_ok[:, None] & d_ok[None, :],
                        other=0.0)  # (BLOCK_N, BLOCK_D)
            if UPCAST_DOT:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2 - lse2[:, None]  # (BS, BLOCK_N)
            s = tl.where(keys_ok[None, :], s, float("-inf"))
            mass += tl.sum(tl.math.exp2(s), 1)
        tl.store(o_base + kb, tl.sum(mass, 0))


def tile_importance_supported(q: torch.Tensor, block_size: int) -> bool:
    """Whether the kernel takes these inputs: CUDA (or the interpreter), fp16/bf16/fp32, D ≤ 256, a power-of-two block
    size of at least 16."""
    return (
        (q.is_cuda or INTERPRETED)
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and q.shape[-1] <= 256
        and block_size >= 16
        and block_size & (block_size - 1) == 0
    )


def tile_probability_sums(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, block_size: int,
                          scale: float) -> torch.Tensor:  # fmt: skip
    """(B, H, nQ, nK) fp32: Σ over each tile of exp(q·kᵀ·scale − lse_row), SparseD's tile mass (Wang et al., 2025).

    q (B, H, Nq, D), k (B, H, Nk, D) of one dtype, lse (B, H, Nq) natural log (rows with +inf contribute 0)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k must be (B, H, N, D) with equal B, H, D; got {tuple(q.shape)}, {tuple(k.shape)}")
    if tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"lse has shape {tuple(lse.shape)}; allowed: (B, H, Nq) = {tuple(q.shape[:3])}")
    if k.dtype != q.dtype or not tile_importance_supported(q, block_size):
        raise ValueError(f"tile_probability_sums cannot run q {q.dtype} on {q.device} (k {k.dtype}), head size "
                         f"{q.shape[-1]}, block size {block_size}: it needs CUDA, equal fp16/bf16/fp32 dtypes, "
                         "D ≤ 256 and a power-of-two block size ≥ 16")  # fmt: skip
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    lse = lse.float().contiguous()
    b, h, n_q, d = q.shape
    n_kv = k.shape[2]
    nqb, nkb = -(-n_q // block_size), -(-n_kv // block_size)
    out = torch.empty(b, h, nqb, nkb, device=q.device, dtype=torch.float32)  # (B, H, nQ, nK)
    if n_q == 0 or n_kv == 0:
        return out.zero_()
    block_d = max(16, triton.next_power_of_2(d))
    block_n = min(block_size, 64 if block_d > 128 else 128)
    _tile_importance_kernel[(nqb, b * h)](
        q, k, lse, out, *q.stride()[:3], *k.stride()[:3], *lse.stride()[:2], *out.stride()[:3],
        h, n_q, n_kv, nkb, float(scale) * LOG2E,
        HEAD_DIM=d, BLOCK_D=block_d, BS=block_size, BLOCK_N=block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOT=INTERPRETED and q.dtype == torch.bfloat16,
        num_warps=8 if block_size >= 128 else 4, num_stages=2,
    )  # fmt: skip
    return out

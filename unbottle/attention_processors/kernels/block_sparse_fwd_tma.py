"""The block-sparse forward kernel on Hopper's tensor memory accelerator: Q, K, V and O tiles move by TMA descriptors.

The same FlashAttention-2 loop as `block_sparse_fwd` (Dao, 2023) over a BlockMask's kept key blocks; the difference is
how tiles reach shared memory. Host-side `TensorDescriptor`s over the (B, H, N, D) tensors (any strides with unit D
stride and 16-byte alignment) let each K/V tile be one asynchronous bulk copy at (b, h, first key, 0): no per-element
address arithmetic or masks on loads, and rows past N read as zeros (stores past N are dropped by the hardware). Key
columns past N still get score -inf, but only when N is not a multiple of the key block (MASK_TAIL); otherwise the
scale folds into one fused multiply-add per score, as in the Triton fused-attention tutorial. Measured on an H200:
+10–15% over the pointer kernel at D = 64 and 128 (bench/results/attention-h200.md). Used for fp16/bf16 with a
power-of-two head size on compute capability ≥ 9; everything else runs the pointer kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    INTERPRETED,
    SHARED_MEMORY_BUDGET,
    TUNED,
    finish_rows,
    kept_list,
    largest_tile,
    remember_tuned,
    store_lse,
    tuned_key,
)

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4: no host-side tensor descriptors, the pointer kernel runs everywhere
    TensorDescriptor = None


@triton.jit
def _attend_kept_blocks_tma(
    acc, l_i, m_i, q, count, width, idx_ptr, stride_idx, desc_k, desc_v, off_b, off_h, n_kv, n_kv_blocks, qk_scale,
    HEAD_DIM: tl.constexpr, KV_BS: tl.constexpr, BLOCK_N: tl.constexpr, MASK_TAIL: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    """Online-softmax update of (acc, l_i, m_i) over the `count` key blocks listed at `idx_ptr`, tiles by TMA."""
    SUBS: tl.constexpr = KV_BS // BLOCK_N  # key tiles per BlockMask key block
    offs_sub = tl.arange(0, BLOCK_N)
    count = tl.minimum(count, width)  # as the reference: a count past the list's width reads only the list
    for j in tl.range(0, count * SUBS, warp_specialize=WARP_SPECIALIZE):
        kb = tl.load(idx_ptr + (j // SUBS) * stride_idx)
        kb = tl.minimum(tl.maximum(kb, 0), n_kv_blocks - 1)  # as the reference: never read outside the keys
        start = kb * KV_BS + (j % SUBS) * BLOCK_N
        k = desc_k.load([off_b, off_h, start, 0]).reshape(BLOCK_N, HEAD_DIM)  # rows past N read as 0
        qk = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N) fp32
        if MASK_TAIL:  # tail keys -inf; a kept block's first tile starts inside the keys, so each row stays finite
            qk = qk * qk_scale + tl.where(start + offs_sub < n_kv, 0.0, float("-inf"))[None, :]
            m_new = tl.maximum(m_i, tl.max(qk, 1))  # (BLOCK_M,) log2 domain
            qk = qk - m_new[:, None]
        else:  # the scale is positive: scale the row max, then one fused multiply-add per score
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]
        p = tl.math.exp2(qk)  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_new)  # (BLOCK_M,); 0 on the first tile (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = desc_v.load([off_b, off_h, start, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc = tl.dot(p.to(v.dtype), v, acc)  # (BLOCK_M, HEAD_DIM); P·V in the input precision
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(
    do_not_specialize=[
        "n_q", "n_kv", "n_kv_blocks", "part_width", "full_width", "stride_lb", "stride_lh", "stride_sb", "stride_sh",
        "stride_sn", "stride_pcb", "stride_pch", "stride_pcq", "stride_pib", "stride_pih", "stride_piq", "stride_pik",
        "stride_fcb", "stride_fch", "stride_fcq", "stride_fib", "stride_fih", "stride_fiq", "stride_fik",
    ]
)  # fmt: skip
def _block_sparse_fwd_tma_kernel(
    desc_q, desc_k, desc_v, desc_o, lse_ptr, scale_ptr,
    part_count_ptr, part_idx_ptr, full_count_ptr, full_idx_ptr,
    stride_lb, stride_lh,
    stride_sb, stride_sh, stride_sn,
    stride_pcb, stride_pch, stride_pcq,
    stride_pib, stride_pih, stride_piq, stride_pik,
    stride_fcb, stride_fch, stride_fcq,
    stride_fib, stride_fih, stride_fiq, stride_fik,
    num_heads, n_q, n_kv, n_kv_blocks, part_width, full_width, qk_scale,
    HEAD_DIM: tl.constexpr, Q_BS: tl.constexpr, KV_BS: tl.constexpr, HAS_PARTIAL: tl.constexpr,
    HAS_FULL: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, STORE_LSE: tl.constexpr, MASK_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr = False,
):  # fmt: skip
    """One (query tile, batch·head) program: block-sparse attention rows, their output and natural-log LSE."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_heads
    off_h = pid_bh % num_heads
    q_block = (pid_m * BLOCK_M) // Q_BS  # BLOCK_M divides Q_BS: the whole tile sits in one BlockMask row
    q = desc_q.load([off_b, off_h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, HEAD_DIM)  # rows past Nq read as 0

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max, log2 domain
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if HAS_PARTIAL:  # partial tiles under the no-op mask_mod: kept whole
        count, idx_ptr = kept_list(part_count_ptr, part_idx_ptr, stride_pcb, stride_pch, stride_pcq, stride_pib,
                                   stride_pih, stride_piq, off_b, off_h, q_block)  # fmt: skip
        acc, l_i, m_i = _attend_kept_blocks_tma(
            acc, l_i, m_i, q, count, part_width, idx_ptr, stride_pik, desc_k, desc_v, off_b, off_h, n_kv,
            n_kv_blocks, qk_scale, HEAD_DIM, KV_BS, BLOCK_N, MASK_TAIL, WARP_SPECIALIZE,
        )  # fmt: skip
    if HAS_FULL:
        count, idx_ptr = kept_list(full_count_ptr, full_idx_ptr, stride_fcb, stride_fch, stride_fcq, stride_fib,
                                   stride_fih, stride_fiq, off_b, off_h, q_block)  # fmt: skip
        acc, l_i, m_i = _attend_kept_blocks_tma(
            acc, l_i, m_i, q, count, full_width, idx_ptr, stride_fik, desc_k, desc_v, off_b, off_h, n_kv,
            n_kv_blocks, qk_scale, HEAD_DIM, KV_BS, BLOCK_N, MASK_TAIL, WARP_SPECIALIZE,
        )  # fmt: skip

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    rows_ok = offs_m < n_q
    o = finish_rows(acc, l_i, scale_ptr, stride_sb, stride_sh, stride_sn, off_b, off_h, offs_m, rows_ok,
                    HAS_OUT_SCALE)  # (BLOCK_M, HEAD_DIM)  # fmt: skip
    desc_o.store([off_b, off_h, pid_m * BLOCK_M, 0], o.to(desc_o.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
    if STORE_LSE:
        store_lse(lse_ptr, stride_lb, stride_lh, off_b, off_h, offs_m, rows_ok, m_i, l_i)


def _set_block_shapes(nargs: dict) -> None:
    """Autotuning pre-hook: each config's tiles become the descriptors' block shapes."""
    block_m, block_n, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
    nargs["desc_q"].block_shape = nargs["desc_o"].block_shape = [1, 1, block_m, d]
    nargs["desc_k"].block_shape = nargs["desc_v"].block_shape = [1, 1, block_n, d]


# (BLOCK_M, BLOCK_N, warps, stages); on an H200 (128, 128, 8, 2) won at D = 128, (64, 128, 4, 3) at D = 64
CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s, pre_hook=_set_block_shapes)
    for m, n, w, s in [
        (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 4, 2),
        (64, 128, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4),
    ]
]  # fmt: skip


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Configs whose tiles divide the BlockMask blocks and fit in shared memory (the smallest one if none do)."""
    args = {**named_args, **kwargs}
    q_bs, kv_bs, d = args["Q_BS"], args["KV_BS"], args["HEAD_DIM"]
    item = args["desc_q"].base.element_size()

    def smem(c: triton.Config) -> int:  # q tile + K and V tiles per pipeline stage
        return (c.kwargs["BLOCK_M"] + 2 * c.num_stages * c.kwargs["BLOCK_N"]) * d * item

    if INTERPRETED:  # the interpreter cannot time configs: the largest dividing tiles run fastest there
        tiles = {"BLOCK_M": largest_tile(q_bs, 128), "BLOCK_N": largest_tile(kv_bs, 128)}
        return [triton.Config(tiles, pre_hook=_set_block_shapes)]
    fits = [c for c in configs if q_bs % c.kwargs["BLOCK_M"] == 0 and kv_bs % c.kwargs["BLOCK_N"] == 0
            and smem(c) <= SHARED_MEMORY_BUDGET]  # fmt: skip
    if fits:
        return fits
    small = {"BLOCK_M": largest_tile(q_bs, 64), "BLOCK_N": largest_tile(kv_bs, 64)}
    stages = 2 if (small["BLOCK_M"] + 4 * small["BLOCK_N"]) * d * item <= SHARED_MEMORY_BUDGET else 1
    return [triton.Config(small, num_warps=4, num_stages=stages, pre_hook=_set_block_shapes)]


_block_sparse_fwd_tma_tuned = triton.autotune(
    configs=CONFIGS, key=["HEAD_DIM", "Q_BS", "KV_BS", "MASK_TAIL"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_block_sparse_fwd_tma_kernel)  # fmt: skip


def _aligned(t: torch.Tensor) -> bool:
    """TMA's layout rules: 16-byte aligned base, unit stride on D, every other stride a multiple of 16 bytes."""
    item = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s * item % 16 == 0 for s in t.stride()[:-1])


def tma_eligible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the TMA kernel can run these validated inputs: fp16/bf16, D a power of two (16–256), TMA-aligned
    tensors (`out` too), and a Triton with host tensor descriptors."""
    d = q.shape[-1]
    return (
        TensorDescriptor is not None
        and q.dtype in (torch.float16, torch.bfloat16)
        and d in (16, 32, 64, 128, 256)
        and all(_aligned(t) for t in (q, k, v, out))
        and min(q.shape[2], k.shape[2]) > 0
    )


def launch_tma(args: dict, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               config: dict | None = None) -> None:  # fmt: skip
    """Run the TMA kernel; `args` are `block_sparse_fwd._launch`'s kernel arguments (the pointer ones are dropped)."""
    b, h, n_q, d = q.shape
    placeholder = [1, 1, 16, d]  # the pre-hook (or the explicit config below) sets the real block shapes
    kernel_args = dict(
        desc_q=TensorDescriptor.from_tensor(q, placeholder), desc_k=TensorDescriptor.from_tensor(k, placeholder),
        desc_v=TensorDescriptor.from_tensor(v, placeholder), desc_o=TensorDescriptor.from_tensor(out, placeholder),
        **{name: args[name] for name in _SHARED_ARGS}, MASK_TAIL=args["n_kv"] % args["KV_BS"] != 0,
    )  # fmt: skip

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(n_q, meta["BLOCK_M"]), b * h

    if config is None:
        key = tuned_key({**kernel_args, "q": q}, "tma")
        config = TUNED.get(key)
        if config is None:
            _block_sparse_fwd_tma_tuned[grid](**kernel_args)
            remember_tuned(key, _block_sparse_fwd_tma_tuned)
            return
    tiles = {"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"]}
    _set_block_shapes({**kernel_args, **tiles})
    _block_sparse_fwd_tma_kernel[grid](
        **kernel_args, **tiles, WARP_SPECIALIZE=config.get("warp_specialize", False),
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 2),
    )  # fmt: skip


_SHARED_ARGS = (
    "lse_ptr", "scale_ptr", "part_count_ptr", "part_idx_ptr", "full_count_ptr", "full_idx_ptr",
    "stride_lb", "stride_lh", "stride_sb", "stride_sh", "stride_sn",
    "stride_pcb", "stride_pch", "stride_pcq", "stride_pib", "stride_pih", "stride_piq", "stride_pik",
    "stride_fcb", "stride_fch", "stride_fcq", "stride_fib", "stride_fih", "stride_fiq", "stride_fik",
    "num_heads", "n_q", "n_kv", "n_kv_blocks", "part_width", "full_width", "qk_scale",
    "HEAD_DIM", "Q_BS", "KV_BS", "HAS_PARTIAL", "HAS_FULL", "HAS_OUT_SCALE", "STORE_LSE",
)  # fmt: skip

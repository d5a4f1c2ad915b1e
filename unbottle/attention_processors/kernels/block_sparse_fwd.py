"""Triton forward kernel for block-sparse attention over a FlexAttention `BlockMask`, with row log-sum-exps.

FlashAttention-2 tiling (Dao, 2023): one program per (query tile, batch·head) keeps a running max, sum and output
accumulator (online softmax in base 2, log2(e) folded into the scale) and visits only the key blocks that the
BlockMask lists for its query block: `kv_num_blocks`/`kv_indices` (partial tiles) and `full_kv_num_blocks`/
`full_kv_indices` (full tiles). Our masks (`block_mask.pattern_to_block_mask`) mark every kept tile full; partial
tiles are accepted only with FlexAttention's no-op mask_mod, which keeps them whole, so both lists run the same
loop. Sequence tails (N not a multiple of the block size, Nq != Nk) are masked per token: out-of-range keys get
score -inf, out-of-range query rows are never stored. Lengths are runtime arguments (no recompilation per N);
head sizes pad to the next power of two with masked loads. Autotuning is keyed on head size, block sizes and dtype.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import triton
import triton.language as tl
from torch.nn.attention.flex_attention import BlockMask, noop_mask

from .block_sparse_fwd_tma import launch_tma, tma_eligible
from .common import (
    INTERPRETED,
    LOG2E,
    SHARED_MEMORY_BUDGET,
    TUNED,
    finish_rows,
    kept_list,
    largest_tile,
    remember_tuned,
    store_lse,
    tuned_key,
)

MAX_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Hopper-sized tiles; the pruner keeps those that divide the BlockMask's block sizes and fit in shared memory
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=4, num_stages=2),
]


@triton.jit
def _load_rows(ptrs, rows_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (rows, BLOCK_D) tile; rows past the sequence and columns past the head size read as 0."""
    if BLOCK_D == HEAD_DIM:
        tile = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
    else:
        tile = tl.load(ptrs, mask=rows_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    return tile


@triton.jit
def _attend_kept_blocks(
    acc, l_i, m_i, q, count, width, idx_ptr, stride_idx, k_base, v_base, stride_kn, stride_vn, offs_d, n_kv,
    n_kv_blocks, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, KV_BS: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """Online-softmax update of (acc, l_i, m_i) over the `count` key blocks listed at `idx_ptr` (FlashAttention-2)."""
    SUBS: tl.constexpr = KV_BS // BLOCK_N  # key tiles per BlockMask key block
    offs_sub = tl.arange(0, BLOCK_N)
    count = tl.minimum(count, width)  # as the reference: a count past the list's width reads only the list
    for j in range(0, count * SUBS):
        kb = tl.load(idx_ptr + (j // SUBS) * stride_idx)
        kb = tl.minimum(tl.maximum(kb, 0), n_kv_blocks - 1)  # as the reference: never read outside the keys
        offs_n = kb * KV_BS + (j % SUBS) * BLOCK_N + offs_sub  # (BLOCK_N,)
        keys_ok = offs_n < n_kv
        k = _load_rows(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], keys_ok, offs_d, HEAD_DIM, BLOCK_D)
        if UPCAST_DOT:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        qk = qk * qk_scale + tl.where(keys_ok, 0.0, float("-inf"))[None, :]  # log2 domain; tail keys -inf
        # finite: a kept block's first key tile starts inside the keys, and tiles of a block run in order, so a
        # tile wholly past the keys (KV_BS > BLOCK_N at the tail) always follows one with a finite score
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # (BLOCK_M,)
        p = tl.math.exp2(qk - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_new)  # (BLOCK_M,); 0 on the first tile (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], keys_ok, offs_d, HEAD_DIM, BLOCK_D)
        acc = acc * alpha[:, None]
        p_in = p.to(v.dtype)  # P·V in the input precision, as FlashAttention-2
        if UPCAST_DOT:
            acc = tl.dot(p_in.to(tl.float32), v.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(p_in, v, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(
    do_not_specialize=[
        "n_q", "n_kv", "n_kv_blocks", "part_width", "full_width",
        "stride_lb", "stride_lh", "stride_sb", "stride_sh", "stride_sn",
        "stride_pcb", "stride_pch", "stride_pcq", "stride_pib", "stride_pih", "stride_piq", "stride_pik",
        "stride_fcb", "stride_fch", "stride_fcq", "stride_fib", "stride_fih", "stride_fiq", "stride_fik",
    ]
)  # fmt: skip
def _block_sparse_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, scale_ptr,
    part_count_ptr, part_idx_ptr, full_count_ptr, full_idx_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    stride_sb, stride_sh, stride_sn,
    stride_pcb, stride_pch, stride_pcq,
    stride_pib, stride_pih, stride_piq, stride_pik,
    stride_fcb, stride_fch, stride_fcq,
    stride_fib, stride_fih, stride_fiq, stride_fik,
    num_heads, n_q, n_kv, n_kv_blocks, part_width, full_width, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, Q_BS: tl.constexpr, KV_BS: tl.constexpr,
    HAS_PARTIAL: tl.constexpr, HAS_FULL: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One (query tile, batch·head) program: block-sparse attention rows, their output and natural-log LSE."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // num_heads
    off_h = pid_bh % num_heads
    q_block = (pid_m * BLOCK_M) // Q_BS  # BLOCK_M divides Q_BS: the whole tile sits in one BlockMask row
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    rows_ok = offs_m < n_q

    q_base = q_ptr + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = k_ptr + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_base = v_ptr + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    q = _load_rows(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], rows_ok, offs_d, HEAD_DIM, BLOCK_D)
    if UPCAST_DOT:  # the Triton 3.8 interpreter multiplies bf16 bit patterns as integers: dot in fp32 there
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max, log2 domain
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_PARTIAL:  # partial tiles under the no-op mask_mod: kept whole
        count, idx_ptr = kept_list(part_count_ptr, part_idx_ptr, stride_pcb, stride_pch, stride_pcq, stride_pib,
                                   stride_pih, stride_piq, off_b, off_h, q_block)  # fmt: skip
        acc, l_i, m_i = _attend_kept_blocks(
            acc, l_i, m_i, q, count, part_width, idx_ptr, stride_pik, k_base, v_base, stride_kn, stride_vn, offs_d,
            n_kv, n_kv_blocks, qk_scale, HEAD_DIM, BLOCK_D, KV_BS, BLOCK_N, DOT_PRECISION, UPCAST_DOT,
        )  # fmt: skip
    if HAS_FULL:
        count, idx_ptr = kept_list(full_count_ptr, full_idx_ptr, stride_fcb, stride_fch, stride_fcq, stride_fib,
                                   stride_fih, stride_fiq, off_b, off_h, q_block)  # fmt: skip
        acc, l_i, m_i = _attend_kept_blocks(
            acc, l_i, m_i, q, count, full_width, idx_ptr, stride_fik, k_base, v_base, stride_kn, stride_vn, offs_d,
            n_kv, n_kv_blocks, qk_scale, HEAD_DIM, BLOCK_D, KV_BS, BLOCK_N, DOT_PRECISION, UPCAST_DOT,
        )  # fmt: skip

    o = finish_rows(acc, l_i, scale_ptr, stride_sb, stride_sh, stride_sn, off_b, off_h, offs_m, rows_ok,
                    HAS_OUT_SCALE)  # (BLOCK_M, BLOCK_D)  # fmt: skip
    o_base = o_ptr + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    o_ptrs = o_base + offs_m[:, None] * stride_on + offs_d[None, :]
    if BLOCK_D == HEAD_DIM:
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=rows_ok[:, None])
    else:
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=rows_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
    if STORE_LSE:
        store_lse(lse_ptr, stride_lb, stride_lh, off_b, off_h, offs_m, rows_ok, m_i, l_i)


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Configs whose tiles divide the BlockMask blocks and fit in shared memory; one in the interpreter (no timing)."""
    args = {**named_args, **kwargs}
    q_bs, kv_bs, block_d = args["Q_BS"], args["KV_BS"], args["BLOCK_D"]
    item = args["q_ptr"].element_size()
    if INTERPRETED:  # the interpreter cannot time configs: the largest dividing tiles run fastest there
        return [triton.Config({"BLOCK_M": largest_tile(q_bs, 128), "BLOCK_N": largest_tile(kv_bs, 128)})]

    def smem(c: triton.Config) -> int:  # q tile + K and V tiles per pipeline stage
        return (c.kwargs["BLOCK_M"] + 2 * c.num_stages * c.kwargs["BLOCK_N"]) * block_d * item

    kept = [
        c for c in configs
        if q_bs % c.kwargs["BLOCK_M"] == 0 and kv_bs % c.kwargs["BLOCK_N"] == 0 and smem(c) <= SHARED_MEMORY_BUDGET
    ]  # fmt: skip
    if kept:
        return kept
    small = {"BLOCK_M": largest_tile(q_bs, 64), "BLOCK_N": largest_tile(kv_bs, 64)}
    stages = 2 if (small["BLOCK_M"] + 4 * small["BLOCK_N"]) * block_d * item <= SHARED_MEMORY_BUDGET else 1
    return [triton.Config(small, num_warps=4, num_stages=stages)]


_block_sparse_fwd_tuned = triton.autotune(
    configs=CONFIGS, key=["HEAD_DIM", "Q_BS", "KV_BS"], prune_configs_by={"early_config_prune": _prune_configs}
)(_block_sparse_fwd_kernel)


def _mask_strides(t: torch.Tensor, prefix: str) -> dict[str, int]:
    """Kernel stride arguments of a BlockMask tensor (B|1, H|1, nQ[, K]); broadcast batch/head dims get stride 0."""
    strides = [0 if t.shape[i] == 1 and i < 2 else s for i, s in enumerate(t.stride())]
    return dict(zip([prefix + c for c in "bhqk"[: t.dim()]], strides, strict=True))


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None,
    out_scale: torch.Tensor | None,
) -> None:  # fmt: skip
    """Raise ValueError naming the argument, its value and what is allowed when the kernel cannot run the inputs."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D); got {shape}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name}.dtype is {t.dtype}; allowed: float16, bfloat16, float32")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all inputs must share one device")
    if not (q.is_cuda or INTERPRETED):
        raise ValueError(f"q is on {q.device}; the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1)")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}; they must be equal")
    b, h, n_q, d = q.shape
    if k.shape[:2] != (b, h) or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"q, k, v shapes do not match: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not 16 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head size D = {d}; allowed 16 ≤ D ≤ {MAX_HEAD_DIM}")
    if k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f"k, v head sizes {k.shape[-1]}, {v.shape[-1]} must equal q's head size {d} (Dv == D)")
    n_kv = k.shape[2]
    if n_kv < 1:
        raise ValueError(f"k has N = {n_kv} tokens; at least 1 key is needed")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale = {scale!r}; allowed: None or a finite float")
    if not isinstance(block_mask, BlockMask):
        raise ValueError(f"block_mask must be a torch BlockMask; got {type(block_mask).__name__}")
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    for name, bs in (("query", q_bs), ("key", kv_bs)):
        if bs < 16 or bs % 16:
            raise ValueError(f"block_mask {name} BLOCK_SIZE = {bs}; allowed: a multiple of 16 (16, 32, …, 128)")
    if tuple(block_mask.seq_lengths) != (n_q, n_kv):
        raise ValueError(f"block_mask.seq_lengths = {tuple(block_mask.seq_lengths)} but q, k have {(n_q, n_kv)}")
    lists = [("kv_num_blocks", block_mask.kv_num_blocks, 3), ("kv_indices", block_mask.kv_indices, 4)]
    if block_mask.full_kv_num_blocks is not None:
        lists += [("full_kv_num_blocks", block_mask.full_kv_num_blocks, 3),
                  ("full_kv_indices", block_mask.full_kv_indices, 4)]  # fmt: skip
    n_qb = -(-n_q // q_bs)
    for name, t, dims in lists:
        if t.dim() != dims or t.shape[0] not in (1, b) or t.shape[1] not in (1, h) or t.shape[2] < n_qb:
            raise ValueError(
                f"block_mask.{name} has shape {tuple(t.shape)}; allowed: {dims}-D (1|{b}, 1|{h}, ≥{n_qb}"
                f"{', K' if dims == 4 else ''}) for q of shape {tuple(q.shape)}"
            )
        if t.device != q.device or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"block_mask.{name} is {t.dtype} on {t.device}; allowed: int32/int64 on {q.device}")
    if block_mask.mask_mod is not noop_mask and bool((block_mask.kv_num_blocks > 0).any()):
        name = getattr(block_mask.mask_mod, "__name__", repr(block_mask.mask_mod))
        raise ValueError(
            f"block_mask has partial tiles with mask_mod {name}; the Triton kernel keeps tiles whole, so only the "
            "no-op mask_mod (or full tiles, as block_mask.pattern_to_block_mask builds) is allowed"
        )
    if out_scale is not None:
        if not isinstance(out_scale, torch.Tensor) or tuple(out_scale.shape) != (b, h, n_q):
            shape = tuple(out_scale.shape) if isinstance(out_scale, torch.Tensor) else type(out_scale).__name__
            raise ValueError(f"out_scale has shape {shape}; allowed: (B, H, Nq) = {(b, h, n_q)}")
        if out_scale.dtype != torch.float32 or out_scale.device != q.device:
            raise ValueError(f"out_scale is {out_scale.dtype} on {out_scale.device}; allowed: float32 on {q.device}")


TMA_REFUSED: set[tuple] = set()  # (dtype, D, block sizes) on which the TMA kernel failed: the pointer kernel runs


def _launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float, out: torch.Tensor,
    lse: torch.Tensor | None, out_scale: torch.Tensor | None = None, config: dict | None = None,
    path: str | None = None,
) -> None:  # fmt: skip
    """Run the kernel into `out` (B, H, Nq, D) and `lse` (B, H, Nq) fp32 (or None); `config` (BLOCK_M, BLOCK_N,
    num_warps, num_stages) bypasses autotuning; `path` "tma" | "pointer" picks the kernel (None: TMA where
    `use_tma` says it runs). Inputs are assumed validated, with unit stride on D."""
    b, h, n_q, d = q.shape
    n_kv = k.shape[2]
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    pc, pi = block_mask.kv_num_blocks, block_mask.kv_indices
    has_full = block_mask.full_kv_num_blocks is not None
    fc, fi = (block_mask.full_kv_num_blocks, block_mask.full_kv_indices) if has_full else (pc, pi)
    dummy_scale = out_scale if out_scale is not None else out
    s_strides = out_scale.stride() if out_scale is not None else (0, 0, 0)
    lse_buf = lse if lse is not None else out
    l_strides = lse.stride()[:2] if lse is not None else (0, 0)
    if lse is not None and lse.stride(2) != 1:
        raise ValueError(f"lse buffer must have unit stride on Nq; got strides {lse.stride()}")
    args = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=out, lse_ptr=lse_buf, scale_ptr=dummy_scale,
        part_count_ptr=pc, part_idx_ptr=pi, full_count_ptr=fc, full_idx_ptr=fi,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_ob=out.stride(0), stride_oh=out.stride(1), stride_on=out.stride(2),
        stride_lb=l_strides[0], stride_lh=l_strides[1],
        stride_sb=s_strides[0], stride_sh=s_strides[1], stride_sn=s_strides[2],
        **_mask_strides(pc, "stride_pc"), **_mask_strides(pi, "stride_pi"),
        **_mask_strides(fc, "stride_fc"), **_mask_strides(fi, "stride_fi"),
        num_heads=h, n_q=n_q, n_kv=n_kv, n_kv_blocks=-(-n_kv // kv_bs), part_width=pi.shape[-1],
        full_width=fi.shape[-1], qk_scale=float(scale) * LOG2E,
        HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), Q_BS=q_bs, KV_BS=kv_bs,
        HAS_PARTIAL=block_mask.mask_mod is noop_mask, HAS_FULL=has_full, HAS_OUT_SCALE=out_scale is not None,
        STORE_LSE=lse is not None, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOT=INTERPRETED and q.dtype == torch.bfloat16,
    )  # fmt: skip

    if path not in (None, "tma", "pointer"):
        raise ValueError(f"path = {path!r}; allowed: None, 'tma', 'pointer'")
    if path == "tma" and not tma_eligible(q, k, v, out):
        raise ValueError(f"path 'tma' cannot run q {tuple(q.shape)} {q.dtype} with strides {q.stride()}: it needs "
                         "fp16/bf16, a power-of-two head size 16–256 and 16-byte aligned tensors")  # fmt: skip
    refusal = (q.dtype, d, q_bs, kv_bs)
    if path == "tma" or (path is None and refusal not in TMA_REFUSED and use_tma(q, k, v, out)):
        if config is not None and (q_bs % config["BLOCK_M"] or kv_bs % config["BLOCK_N"]):
            raise ValueError(f"config tiles ({config['BLOCK_M']}, {config['BLOCK_N']}) must divide the BlockMask "
                             f"blocks ({q_bs}, {kv_bs})")  # fmt: skip
        try:
            launch_tma(args, q, k, v, out, config)
            return
        except Exception as e:  # noqa: BLE001 — e.g. a Triton build that cannot lower it: the pointer kernel runs
            if path == "tma":
                raise
            TMA_REFUSED.add(refusal)
            warnings.warn(f"the TMA kernel failed for {refusal} ({type(e).__name__}: {str(e)[:200]}); the pointer "
                          "kernel runs these inputs from now on", stacklevel=3)  # fmt: skip

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(n_q, meta["BLOCK_M"]), b * h

    if config is None:
        key = tuned_key(args)
        config = TUNED.get(key)
        if config is None:
            _block_sparse_fwd_tuned[grid](**args)
            remember_tuned(key, _block_sparse_fwd_tuned)
            return
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    if q_bs % block_m or kv_bs % block_n:
        raise ValueError(f"config tiles ({block_m}, {block_n}) must divide the BlockMask blocks ({q_bs}, {kv_bs})")
    _block_sparse_fwd_kernel[grid](
        **args, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=config.get("num_warps", 4),
        num_stages=config.get("num_stages", 2),
    )  # fmt: skip


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def use_tma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the TMA kernel runs by default: compiled (not interpreted) on a GPU of compute capability ≥ 9 (Hopper),
    with inputs it takes (`block_sparse_fwd_tma.tma_eligible`)."""
    return (
        not INTERPRETED and q.is_cuda and _capability(q.device.index or 0)[0] >= 9 and tma_eligible(q, k, v, out)
    )


def block_sparse_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None,
    return_lse: bool = True, out_scale: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Block-sparse attention (B, H, N, D) over a BlockMask's kept tiles, FlashAttention-2 tiling (Dao, 2023).

    Returns the output (q's dtype; times `out_scale` (B, H, Nq) fp32 per row if given) and, with `return_lse`, the
    natural-log LSE of each row's kept scores (B, H, Nq) fp32; rows with no kept key get output 0 and LSE -inf.
    """
    _check_inputs(q, k, v, block_mask, scale, out_scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)  # (B, H, Nq, D), q's memory layout when q is dense
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32) if return_lse else None  # (B, H, Nq)
    if q.shape[2] > 0:
        _launch(q, k, v, block_mask, scale, out, lse, out_scale)
    return (out, lse) if return_lse else out

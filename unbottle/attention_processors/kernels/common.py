"""What both block-sparse forward kernels share: the host-side constants and autotuning memory, and the device
helpers for what a program reads and writes besides its tiles.

The pointer kernel (`block_sparse_fwd.py`) and the TMA kernel (`block_sparse_fwd_tma.py`) run one program per
(query tile, batch·head): it looks up its query block's kept key blocks (`kept_list`), and after the online softmax
(FlashAttention-2, Dao 2023) normalizes its rows, applies Re-ttention's per-row ρ (`finish_rows`) and stores the
natural-log LSE (`store_lse`). Both kernels prune autotuning configs by the same shared-memory budget and tile rule,
and keep the config the autotuner picked per key in one `TUNED` table.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
SHARED_MEMORY_BUDGET = 227 * 1024  # bytes per block on H100/H200; the autotuners skip configs that still overflow
TUNED: dict[tuple, dict] = {}  # autotuned config per autotuning key: later calls launch it without the autotuner


@triton.jit
def kept_list(count_ptr, idx_ptr, stride_cb, stride_ch, stride_cq, stride_ib, stride_ih, stride_iq, off_b, off_h,
              q_block):  # fmt: skip
    """(count, pointer to the first index) of one query block's list in a (B|1, H|1, nQ[, K]) BlockMask tensor."""
    count = tl.load(count_ptr + off_b * stride_cb + off_h * stride_ch + q_block * stride_cq)
    return count, idx_ptr + off_b * stride_ib + off_h * stride_ih + q_block * stride_iq


@triton.jit
def finish_rows(acc, l_i, scale_ptr, stride_sb, stride_sh, stride_sn, off_b, off_h, offs_m, rows_ok,
                HAS_OUT_SCALE: tl.constexpr):  # fmt: skip
    """Output rows acc / l (a row with no kept key, l = 0, gives 0: the reference's convention), times ρ if given."""
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # (BLOCK_M, BLOCK_D)
    if HAS_OUT_SCALE:  # Re-ttention's per-row rho
        s_base = scale_ptr + off_b.to(tl.int64) * stride_sb + off_h.to(tl.int64) * stride_sh
        o = o * tl.load(s_base + offs_m * stride_sn, mask=rows_ok, other=0.0)[:, None]
    return o


@triton.jit
def store_lse(lse_ptr, stride_lb, stride_lh, off_b, off_h, offs_m, rows_ok, m_i, l_i):
    """The rows' natural-log LSE from the running max (log2 domain) and sum; l = 0 gives -inf."""
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # log2 → natural log
    l_base = lse_ptr + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
    tl.store(l_base + offs_m, lse, mask=rows_ok)


INTERPRETED = not isinstance(kept_list, triton.runtime.JITFunction)  # triton imported with TRITON_INTERPRET=1


def largest_tile(block_size: int, cap: int) -> int:
    """The largest power of two ≤ `cap` (and ≥ 16) dividing `block_size`."""
    tile = cap
    while tile > 16 and block_size % tile:
        tile //= 2
    return tile


def tuned_key(args: dict, kernel: str = "pointer") -> tuple:
    """The autotuner's own key (HEAD_DIM, block sizes, the tensors' dtypes), plus the kernel's name and MASK_TAIL."""
    dtypes = tuple(str(v.dtype) for v in args.values() if isinstance(v, torch.Tensor))
    return (kernel, args["HEAD_DIM"], args["Q_BS"], args["KV_BS"], args.get("MASK_TAIL"), *dtypes)


def remember_tuned(key: tuple, tuned: triton.runtime.Autotuner) -> None:
    """Keep the config the autotuner just ran (~80 µs of Python per call saved on an H200; not in the interpreter)."""
    best = getattr(tuned, "best_config", None)
    if best is not None and not INTERPRETED:
        TUNED[key] = {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}

"""What a block-sparse program reads and writes besides its tiles: its row of a BlockMask list, ρ, the LSE.

Shared by the pointer kernel (`block_sparse_fwd.py`) and the TMA kernel (`block_sparse_fwd_tma.py`): one program per
(query tile, batch·head) looks up its query block's kept key blocks, and after the online softmax (FlashAttention-2,
Dao 2023) normalizes its rows, applies Re-ttention's per-row ρ and stores the natural-log LSE.
"""

from __future__ import annotations

import triton
import triton.language as tl


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

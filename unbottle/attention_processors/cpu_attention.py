"""Attention with log-sum-exps on CPU: dense through PyTorch's fused flash kernel, block-sparse over the kept key
blocks only.

The block-sparse route gathers, per (batch, head, query block) row, just its kept key blocks by index (rows grouped by
kept count so padding slots stay few), and runs the flash kernel on those rows with an additive mask for the padding
slots, the sequence tail and a key mask. Tiny tiles (a row's queries × kept keys ≤ `SMALL_TILE`, e.g. a 256-token image
in 16-token blocks) run as two batched matmuls instead: there the flash kernel's per-row setup costs more than the
arithmetic (measured 1.3–2.6× slower on 2 cores). Both follow the reference's semantics (reference.py): natural-log LSE
in fp32, rows with no key get output 0 and LSE -inf. Inputs the kernel does not take (other dtypes, value head size ≠
query head size, partial tiles with a mask_mod, masks with per-query structure) run the reference.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from .block_mask import num_blocks
from .reference import block_sparse_attention_reference, dense_attention_reference

_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_GATHER_BUDGET = 2**24  # gathered key (and value) elements per chunk of rows (64 MiB each in fp32)
SMALL_TILE = 2048  # a row's queries × kept keys up to which the matmul route runs
_SCORES_BUDGET = 2**19  # score elements per chunk of the matmul route (2 MiB in fp32: stays in cache)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None):
    """The CPU flash kernel: output (B, H, Nq, D) in q's dtype and natural-log LSE (B, H, Nq) in fp32 (fp64 for
    fp64); fully masked rows come back as output 0, LSE 0."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask, scale=scale)


def _matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`_flash`'s contract for small tiles (q (c, 1, q_bs, D), k/v (c, 1, W, D), bias (c, 1, 1, W)) by two batched
    matmuls, in fp32 at least; rows whose every key is masked give output 0 (their LSE is -inf here)."""
    work = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (x[:, 0].to(work) for x in (q, k, v))  # (c, q_bs, D), (c, W, D)
    scores = torch.bmm(qf, kf.transpose(1, 2)).mul_(scale)  # (c, q_bs, W)
    if bias is not None:
        scores.add_(bias[:, 0].to(work))
    lse = scores.logsumexp(-1, keepdim=True)  # (c, q_bs, 1)
    weights = scores.sub_(lse.masked_fill(torch.isinf(lse), 0.0)).exp_()  # masked keys: exp(-inf) = 0
    return torch.bmm(weights, vf).to(q.dtype)[:, None], lse[..., 0][:, None]


def _flash_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return (
        q.device.type == "cpu" and q.dtype in _FLASH_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
        and v.shape[-1] == q.shape[-1]
    )  # fmt: skip


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`mask` (bool: True = may attend, or additive) as an additive mask in `dtype` (finite values kept finite)."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
    if mask.dtype == dtype:
        return mask
    lo = torch.finfo(dtype).min
    return torch.where(torch.isinf(mask), mask, mask.clamp(min=lo, max=-lo)).to(dtype)


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """Bool: where `mask` (bool or additive) lets a score through."""
    return mask if mask.dtype == torch.bool else mask != float("-inf")


def dense_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Exact attention (B, H, Nq, D) and its natural-log row LSE (B, H, Nq) on CPU, as `dense_attention_reference`
    gives them: the fused flash kernel (`attn_mask` bool or additive, broadcastable to (B, H, Nq, Nk))."""
    if not _flash_applies(q, k, v) or (attn_mask is not None and not 1 <= attn_mask.dim() <= 4):
        return dense_attention_reference(q, k, v, attn_mask=attn_mask, scale=scale)
    if attn_mask is None:
        out, lse = _flash(q, k, v, None, scale)
        return out, lse.float()
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))  # (Bm, Hm, Qm, Nk)
    out, lse = _flash(q, k, v, _additive(m, q.dtype), scale)
    empty = ~_allowed(m).any(-1)  # (Bm, Hm, Qm): rows that may attend no key
    return out.masked_fill(empty[..., None], 0.0), lse.float().masked_fill(empty, float("-inf"))


@dataclass(frozen=True)
class _Group:
    """Rows of one kept-count group: `rows` (g,) (None: every row, in order), `blocks` (g·W,) rows of the padded
    (B·H·nK, kv_bs, D) keys to gather, `bias` (g, 1, 1, W·kv_bs) 0 on kept keys, -inf on padding slots and the tail
    (`masked`: whether it has any -inf)."""

    rows: torch.Tensor | None
    width: int
    blocks: torch.Tensor
    bias: torch.Tensor
    masked: bool


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockMask -> {(B, H, Nq, Nk, dtype): groups}


def _row_groups(counts: list[int]) -> list[list[int]]:
    """Rows with at least one kept block, grouped by kept count on a √2 ladder (padding slots ≤ 41% of a group)."""
    groups: dict[int, list[int]] = {}
    for row, c in enumerate(counts):
        if c > 0:
            groups.setdefault(math.ceil(2 * math.log2(c) - 1e-9), []).append(row)
    return list(groups.values())


def _plan(block_mask: BlockMask, b: int, h: int, n_q: int, n_kv: int, dtype: torch.dtype, d: int) -> list[_Group]:
    """The row groups of `block_mask` for these shapes (kept per BlockMask: cached patterns reuse theirs)."""
    key = (b, h, n_q, n_kv, dtype, d)
    plans = _plans.setdefault(block_mask, {})
    if key in plans:
        return plans[key]
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    nqb, nkb = num_blocks(n_q, q_bs), num_blocks(n_kv, kv_bs)
    full_counts, full_indices = block_mask.full_kv_num_blocks, block_mask.full_kv_indices
    groups = []
    if full_counts is not None and full_indices.shape[-1] > 0:
        width_max = full_indices.shape[-1]
        counts = full_counts[:, :, :nqb].expand(b, h, nqb).reshape(-1).clamp(0, width_max).long()  # (R,)
        indices = full_indices[:, :, :nqb].expand(b, h, nqb, width_max).reshape(-1, width_max)  # (R, K)
        indices = indices.long().clamp(0, nkb - 1)
        tail = F.pad(torch.zeros(n_kv, dtype=dtype), (0, nkb * kv_bs - n_kv), value=float("-inf")).view(nkb, kv_bs)
        for rows in _row_groups(counts.tolist()):
            rows = torch.tensor(rows)  # (g,)
            width = int(counts[rows].max())
            blocks = (rows // nqb)[:, None] * nkb + indices[rows, :width]  # (g, W)
            slots = torch.arange(width)[None, :] < counts[rows][:, None]  # (g, W): the row's kept slots
            bias = tail[indices[rows, :width]].masked_fill(~slots[..., None], float("-inf"))  # (g, W, kv_bs)
            every = rows.numel() == counts.numel()
            groups.append(_Group(None if every else rows, width, blocks.reshape(-1),
                                 bias.view(rows.numel(), 1, 1, width * kv_bs), bool(bias.isinf().any())))  # fmt: skip
    plans[key] = groups
    return groups


def _key_bias(attn_mask: torch.Tensor, b: int, h: int, n_kv: int, padded: int, dtype: torch.dtype) -> torch.Tensor:
    """(B·H, padded) additive bias per key from a key mask (…, 1, Nk), 0 past the sequence's end."""
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))[:, :, 0]  # (Bm, Hm, Nk)
    return F.pad(_additive(m, dtype).expand(b, h, n_kv), (0, padded - n_kv)).reshape(b * h, padded)


def block_sparse_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Block-sparse attention over the kept tiles of `block_mask` on CPU: output (B, H, Nq, D) and LSE (B, H, Nq),
    as `block_sparse_attention_reference` gives them (`attn_mask`: a key mask (…, 1, Nk), bool or additive)."""
    b, h, n_q, d = q.shape
    n_kv = k.shape[2]
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    nqb, nkb = num_blocks(n_q, q_bs), num_blocks(n_kv, kv_bs)
    full_counts = block_mask.full_kv_num_blocks
    if (
        not _flash_applies(q, k, v) or bool(block_mask.kv_num_blocks.any())  # partial tiles: mask_mod per element
        or (full_counts is not None and full_counts.shape[2] < nqb)
        or (attn_mask is not None and (attn_mask.dim() > 4 or attn_mask.dim() < 2 or attn_mask.shape[-2] != 1))
    ):  # fmt: skip
        return block_sparse_attention_reference(q, k, v, block_mask, scale=scale, attn_mask=attn_mask)
    scale = d**-0.5 if scale is None else scale
    groups = _plan(block_mask, b, h, n_q, n_kv, q.dtype, d)
    qp = F.pad(q, (0, 0, 0, nqb * q_bs - n_q)).reshape(b * h * nqb, q_bs, d)  # (R, q_bs, D), R = B·H·nQ rows
    kp = F.pad(k, (0, 0, 0, nkb * kv_bs - n_kv)).reshape(b * h * nkb, kv_bs, d)  # (B·H·nK, kv_bs, D)
    vp = F.pad(v, (0, 0, 0, nkb * kv_bs - n_kv)).reshape(b * h * nkb, kv_bs, d)
    keys = None if attn_mask is None else _key_bias(attn_mask, b, h, n_kv, nkb * kv_bs, q.dtype).view(-1, kv_bs)
    if len(groups) == 1 and groups[0].rows is None:  # every row, one kept count
        out, lse = _group_attention(qp, kp, vp, keys, groups[0], scale, kv_bs)
    else:
        out = q.new_zeros(b * h * nqb, q_bs, d)  # (R, q_bs, D)
        lse = torch.full((b * h * nqb, q_bs), float("-inf"), dtype=torch.float32)
        for group in groups:
            o, row_lse = _group_attention(qp, kp, vp, keys, group, scale, kv_bs)
            out[group.rows] = o
            lse[group.rows] = row_lse
    out = out.view(b, h, nqb * q_bs, d)[:, :, :n_q]
    return out, lse.view(b, h, nqb * q_bs)[:, :, :n_q]


def _group_attention(
    qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, keys: torch.Tensor | None, group: _Group, scale: float,
    kv_bs: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Output (g, q_bs, D) and LSE (g, q_bs) of one group's rows over their gathered key blocks, in chunks."""
    g, width, d = group.bias.shape[0], group.width, qp.shape[-1]
    tile = qp.shape[1] * width * kv_bs  # one row's query × kept-key pairs
    small = tile <= SMALL_TILE
    attention = _matmul_attention if small else _flash
    step = max(1, _SCORES_BUDGET // tile if small else _GATHER_BUDGET // (width * kv_bs * d))
    outs, lses = [], []
    for start in range(0, g, step):
        stop = min(start + step, g)
        blocks = group.blocks[start * width : stop * width]  # (c·W,)
        kg = kp.index_select(0, blocks).view(stop - start, 1, width * kv_bs, d)  # (c, 1, W·kv_bs, D)
        vg = vp.index_select(0, blocks).view(stop - start, 1, width * kv_bs, d)
        qg = qp[start:stop] if group.rows is None else qp.index_select(0, group.rows[start:stop])  # (c, q_bs, D)
        bias = group.bias[start:stop] if group.masked or keys is not None else None  # (c, 1, 1, W·kv_bs)
        if keys is not None:
            bias = bias + keys.index_select(0, blocks).view_as(bias)
        o, row_lse = attention(qg[:, None], kg, vg, bias, scale)  # (c, 1, q_bs, D), (c, 1, q_bs)
        o, row_lse = o[:, 0], row_lse[:, 0].float()
        if keys is not None:  # rows whose every kept key is masked: output 0, LSE -inf
            empty = (bias == float("-inf")).all(-1).view(-1, 1)  # (c, 1)
            o, row_lse = o.masked_fill(empty[..., None], 0.0), row_lse.masked_fill(empty, float("-inf"))
        outs.append(o)
        lses.append(row_lse)
    return (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))

"""PyTorch reference attention with log-sum-exps: dense, and block-sparse over a FlexAttention `BlockMask`.

The block-sparse reference gathers only the kept key blocks of each query block (never an N×N score matrix), in
chunks of query blocks, so it runs on CPU for tests and is the ground truth for the fast paths.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask

from .block_mask import kept_blocks, num_blocks


def dense_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
    scale: float | None = None, chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Exact attention (B, H, N, D) and its row log-sum-exp (B, H, N), fp32 math, chunked over queries."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs, lses = [], []
    for start in range(0, q.shape[2], chunk):
        s = torch.matmul(q[:, :, start : start + chunk].float(), k.float().transpose(-1, -2)) * scale  # (B, H, c, Nk)
        if attn_mask is not None:
            m = attn_mask[..., start : start + chunk, :] if attn_mask.shape[-2] > 1 else attn_mask
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
        lse = torch.logsumexp(s, dim=-1)  # (B, H, c)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        outs.append(torch.matmul(p, v.float()))
        lses.append(lse)
    return torch.cat(outs, 2).to(q.dtype), torch.cat(lses, 2)


def _gather_mask(
    attn_mask: torch.Tensor, b: int, h: int, n_q: int, n_kv: int, row0: int, rows: int, kv_idx: torch.Tensor
) -> torch.Tensor:
    """The entries of `attn_mask` (broadcastable to (B, H, Nq, Nk)) at the gathered key columns of a query chunk."""
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    c, q_bs, width = kv_idx.shape[2], rows // kv_idx.shape[2], kv_idx.shape[-1]
    cols = kv_idx.reshape(b, h, c, 1, width)  # (B, H, c, 1, K·kv_bs)
    if m.shape[2] == 1:  # a key mask, the same for every query
        keys = m[:, :, 0].expand(b, h, n_kv)
        return torch.gather(keys, -1, cols.reshape(b, h, c * width)).view(b, h, c, 1, width)
    m = m.expand(b, h, n_q, n_kv)
    m = torch.nn.functional.pad(m, (0, 0, 0, max(0, row0 + rows - n_q)))[:, :, row0 : row0 + rows]
    return torch.gather(m.reshape(b, h, c, q_bs, n_kv), -1, cols.expand(b, h, c, q_bs, width))


def block_sparse_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None,
    attn_mask: torch.Tensor | None = None, chunk_blocks: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Block-sparse attention over the kept tiles of `block_mask`: output (B, H, Nq, D) and LSE (B, H, Nq).

    Partial tiles apply the BlockMask's mask_mod per element; `attn_mask` (bool or additive, broadcastable to
    (B, H, Nq, Nk)) further restricts keys. Rows with no kept key get output 0 and LSE -inf.
    """
    b, h, n_q, d = q.shape
    n_kv = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    q_bs, kv_bs = block_mask.BLOCK_SIZE
    nqb, nkb = num_blocks(n_q, q_bs), num_blocks(n_kv, kv_bs)
    indices, valid, partial = kept_blocks(block_mask)  # (Bm, Hm, nQ, K)
    indices, valid, partial = (t.expand(b, h, *t.shape[2:]) for t in (indices, valid, partial))
    indices = indices.clamp(0, nkb - 1)
    kp = torch.nn.functional.pad(k, (0, 0, 0, nkb * kv_bs - n_kv)).view(b, h, nkb, kv_bs, d)
    vp = torch.nn.functional.pad(v, (0, 0, 0, nkb * kv_bs - n_kv)).view(b, h, nkb, kv_bs, d)
    qp = torch.nn.functional.pad(q, (0, 0, 0, nqb * q_bs - n_q)).view(b, h, nqb, q_bs, d)
    outs, lses = [], []
    for start in range(0, nqb, chunk_blocks):
        stop = min(start + chunk_blocks, nqb)
        idx, ok, part = indices[:, :, start:stop], valid[:, :, start:stop], partial[:, :, start:stop]  # (B, H, c, K)
        c, kk = idx.shape[2], idx.shape[3]
        gather = idx[..., None, None].expand(b, h, c, kk, kv_bs, d)
        kg = torch.gather(kp[:, :, None].expand(b, h, c, nkb, kv_bs, d), 3, gather).reshape(b, h, c, kk * kv_bs, d)
        vg = torch.gather(vp[:, :, None].expand(b, h, c, nkb, kv_bs, d), 3, gather).reshape(b, h, c, kk * kv_bs, d)
        s = torch.matmul(qp[:, :, start:stop].float(), kg.float().transpose(-1, -2)) * scale  # (B, H, c, qbs, K·kbs)
        kv_idx = (idx[..., None] * kv_bs + torch.arange(kv_bs, device=q.device)).reshape(b, h, c, 1, kk * kv_bs)
        q_idx = torch.arange(start, stop, device=q.device)[:, None] * q_bs + torch.arange(q_bs, device=q.device)
        q_idx = q_idx.view(1, 1, c, q_bs, 1)
        keep = ok.repeat_interleave(kv_bs, -1)[..., None, :] & (kv_idx < n_kv)  # (B, H, c, 1, K·kv_bs)
        if part.any():
            bi = torch.arange(b, device=q.device).view(b, 1, 1, 1, 1)
            hi = torch.arange(h, device=q.device).view(1, h, 1, 1, 1)
            # padded positions past the sequence are masked anyway; clamp them so index-based mask_mods stay in range
            elem = block_mask.mask_mod(bi, hi, q_idx.clamp(max=n_q - 1), kv_idx.clamp(max=n_kv - 1)).bool()
            keep = keep & (~part.repeat_interleave(kv_bs, -1)[..., None, :] | elem)
        if attn_mask is not None:
            gathered = _gather_mask(attn_mask, b, h, n_q, n_kv, start * q_bs, c * q_bs, kv_idx.clamp(max=n_kv - 1))
            if gathered.dtype == torch.bool:
                keep = keep & gathered
            else:
                s = s + gathered.float()
        s = s.masked_fill(~keep, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (B, H, c, q_bs)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        outs.append(torch.matmul(p, vg.float()))  # (B, H, c, q_bs, D)
        lses.append(lse)
    out = torch.cat(outs, 2).reshape(b, h, nqb * q_bs, d)[:, :, :n_q]
    lse = torch.cat(lses, 2).reshape(b, h, nqb * q_bs)[:, :, :n_q]
    return out.to(q.dtype), lse

"""Which key blocks each (head, query block) keeps: "window" (locality), "dynamic" (pooled q·k), "cached" (SparseD).

DiT patterns keep the blocks holding text/conditioning tokens (as keys, and as dense query rows) and the diagonal
block, then the top `ceil(density · n_key_blocks)` blocks by score, or ("cached" with a `coverage`) the fewest blocks
whose exact softmax mass reaches the coverage, per row. Diffusion-LM patterns (SparseD's isolated selection) keep
the diagonal block and the top blocks of the prompt and of the generated region, each ranked on its own. Patterns
are (indices, counts) kept-block lists, see block_mask.py.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ..families.layout import TokenLayout
from .block_mask import num_blocks
from .layout import token_coordinates


def keep_count(density: float, n_kv_blocks: int) -> int:
    """Key blocks kept per query-block row at `density` (at least one)."""
    return max(1, min(n_kv_blocks, math.ceil(density * n_kv_blocks - 1e-9)))


def forced_blocks(layout: TokenLayout, n: int, block_size: int, device: torch.device | str) -> torch.Tensor:
    """(nQ, nK) bool: tiles every pattern keeps — text key blocks, text query rows, the diagonal."""
    _, is_text = token_coordinates(layout, n, device)
    nb = num_blocks(n, block_size)
    text_block = F.pad(is_text, (0, nb * block_size - n)).view(nb, block_size).any(-1)  # (nB,)
    forced = text_block[None, :] | text_block[:, None]
    return forced | torch.eye(nb, dtype=torch.bool, device=device)


def select_blocks(
    scores: torch.Tensor, forced: torch.Tensor, density: float, max_forced: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top blocks per row of `scores` (B, H, nQ, nK) plus the `forced` (nQ, nK) ones → (indices, counts).

    `max_forced` (the most forced tiles in a row, known on the host) avoids a device→host sync per call.
    """
    n_k = scores.shape[-1]
    k = keep_count(density, n_k)
    counts = forced.sum(-1).clamp(min=k).expand(scores.shape[:-1])  # (B, H, nQ)
    ranked = scores.float().masked_fill(forced, float("inf"))
    width = max(k, max_forced) if max_forced is not None else int(counts.max())
    indices = ranked.topk(width, dim=-1, sorted=True).indices  # forced first, then by score
    return indices.to(torch.int32), counts.to(torch.int32).contiguous()


COVERAGE_TOLERANCE = 1e-6  # softmax mass short of the coverage by at most this counts as reached (float rounding)


def select_by_coverage(
    scores: torch.Tensor, forced: torch.Tensor, coverage: float, rows_per_block: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of tile sums `scores` (B, H, nQ, nK) (Σ exp(s − LSE) over each tile), the fewest key blocks whose
    softmax mass reaches `coverage` → (indices, counts) as `select_blocks` gives them.

    A tile's mass is its sum divided by the query rows of its block, `rows_per_block` (nQ,) or one int (so a row's
    masses sum to 1). The `forced` (nQ, nK) tiles come first and count towards the mass, then tiles by descending
    mass (ties: the lower key block first) until the cumulative mass reaches `coverage` (within
    `COVERAGE_TOLERANCE`); at least one per row. One device→host sync (the kept width).
    """
    rows = torch.as_tensor(rows_per_block, device=scores.device, dtype=torch.float64).reshape(-1, 1)  # (nQ, 1)
    mass = (scores.double().nan_to_num(0.0, 0.0, 0.0).clamp(min=0.0) / rows).expand(*scores.shape)  # (B, H, nQ, nK)
    order = mass.masked_fill(forced, float("inf")).sort(dim=-1, descending=True, stable=True).indices  # forced first
    ranked = mass.gather(-1, order)  # (B, H, nQ, nK) masses in kept order
    before = F.pad(ranked.cumsum(-1)[..., :-1], (1, 0))  # mass of the tiles ranked ahead of each
    reached = (before < coverage - COVERAGE_TOLERANCE).sum(-1)  # (B, H, nQ): ranks kept before the mass is reached
    counts = torch.maximum(reached.clamp(min=1), forced.sum(-1))
    width = int(counts.max())
    return order[..., :width].to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()


def block_sizes(n: int, block_size: int, device: torch.device | str) -> torch.Tensor:
    """(nB,) fp32 tokens per block of `n` tokens: `block_size`, the last one the rest."""
    nb = num_blocks(n, block_size)
    sizes = torch.full((nb,), block_size, device=device, dtype=torch.float32)
    sizes[-1] = n - (nb - 1) * block_size
    return sizes


def kept_fraction(counts: torch.Tensor, n_kv_blocks: int) -> float:
    """Kept tiles / (nQ · nK) of a pattern's `counts` (B, H, nQ), averaged over batch, heads and rows (one sync)."""
    return int(counts.long().sum()) / (counts.numel() * n_kv_blocks)


def window_scores(layout: TokenLayout, n: int, block_size: int, device: torch.device | str) -> torch.Tensor:
    """(1, 1, nQ, nK) negative distances between block centroids in (frame, row, column) token coordinates."""
    coords, is_text = token_coordinates(layout, n, device)
    nb = num_blocks(n, block_size)
    weight = F.pad((~is_text).float(), (0, nb * block_size - n)).view(nb, block_size, 1)
    summed = (F.pad(coords, (0, 0, 0, nb * block_size - n)).view(nb, block_size, 3) * weight).sum(1)
    centroid = summed / weight.sum(1).clamp(min=1.0)  # (nB, 3)
    dist = torch.cdist(centroid, centroid)  # (nB, nB)
    tie = torch.arange(nb, device=device).float() * 1e-6  # stable order among equal distances
    return -(dist + tie[None, :])[None, None]


def pooled_scores(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float) -> torch.Tensor:
    """(B, H, nQ, nK) scores of block-mean queries against block-mean keys: the "dynamic" estimate."""

    def pool(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, D) -> (B, H, nB, D)
        n = x.shape[2]
        nb = num_blocks(n, block_size)
        padded = F.pad(x.float(), (0, 0, 0, nb * block_size - n)).view(*x.shape[:2], nb, block_size, x.shape[-1])
        count = torch.full((nb,), block_size, device=x.device, dtype=torch.float32)
        count[-1] = n - (nb - 1) * block_size
        return padded.sum(3) / count[:, None]

    return torch.matmul(pool(q), pool(k).transpose(-1, -2)) * scale


def exact_block_importance(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, block_size: int, scale: float, chunk: int = 1024,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """(1, H, nQ, nK) mean softmax probability per tile under exact attention, averaged over the batch (SparseD).

    On CUDA without `attn_mask`, one fused Triton pass (kernels/tile_importance.py); otherwise (and as its reference)
    chunks of `chunk` query rows through an fp32 score matrix."""
    b, h, n, _ = q.shape
    n_kv = k.shape[2]
    nqb, nkb = num_blocks(n, block_size), num_blocks(n_kv, block_size)
    sums = _fused_tile_sums(q, k, lse, block_size, scale) if attn_mask is None and q.is_cuda else None
    if sums is None:
        sums = _tile_sums(q, k, lse, block_size, scale, chunk, attn_mask)
    q_sizes = torch.full((nqb,), block_size, device=q.device, dtype=torch.float32)
    q_sizes[-1] = n - (nqb - 1) * block_size
    k_sizes = torch.full((nkb,), block_size, device=q.device, dtype=torch.float32)
    k_sizes[-1] = n_kv - (nkb - 1) * block_size
    return (sums / (q_sizes[:, None] * k_sizes[None, :])).mean(0, keepdim=True)


_fused_refused: set = set()  # (dtype, head size, block size) on which the fused kernel failed


def _fused_tile_sums(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, block_size: int, scale: float):
    """(B, H, nQ, nK) tile sums from the Triton kernel, or None where it does not run (then PyTorch does)."""
    key = (q.dtype, q.shape[-1], block_size)
    if key in _fused_refused or k.dtype != q.dtype:
        return None
    try:
        from .kernels.tile_importance import tile_importance_supported, tile_probability_sums

        if not tile_importance_supported(q, block_size):
            return None
        return tile_probability_sums(q, k, lse, block_size, scale)
    except Exception as e:  # noqa: BLE001 — no Triton, or a build that cannot lower it: the PyTorch pass runs
        _fused_refused.add(key)
        warnings.warn(f"the fused tile-importance kernel failed for {key} ({type(e).__name__}: {str(e)[:200]}); "
                      "the PyTorch pass runs from now on", stacklevel=3)  # fmt: skip
        return None


def _tile_sums(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, block_size: int, scale: float, chunk: int,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """(B, H, nQ, nK) Σ exp(s − lse) per tile, `chunk` query rows at a time (the reference of the fused kernel)."""
    b, h, n, _ = q.shape
    n_kv = k.shape[2]
    nqb, nkb = num_blocks(n, block_size), num_blocks(n_kv, block_size)
    chunk = max(block_size, chunk // block_size * block_size)
    rows = []
    for start in range(0, n, chunk):
        s = torch.matmul(q[:, :, start : start + chunk], k.transpose(-1, -2)).float().mul_(scale)  # (B, H, c, Nk)
        if attn_mask is not None:  # masked keys carry no probability (bool: keep where True; else additive)
            m = attn_mask[..., start : start + chunk, :] if attn_mask.shape[-2] > 1 else attn_mask
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
        p = s.sub_(lse[:, :, start : start + chunk, None].float()).exp_()  # in place: one score buffer per chunk
        c = p.shape[2]
        if nkb * block_size != n_kv or c % block_size:
            p = F.pad(p, (0, nkb * block_size - n_kv, 0, math.ceil(c / block_size) * block_size - c))
        tiles = p.view(b, h, -1, block_size, nkb, block_size).sum((3, 5))  # (B, H, c/bs, nK)
        rows.append(tiles)
    return torch.cat(rows, 2)[:, :, :nqb]


# -- SparseD's isolated selection (diffusion LMs) -------------------------------------------------------------------
def _top(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """(…, nK) bool: the `k` highest `scores` among the `allowed` key blocks of each row."""
    ranked = scores.float().nan_to_num(0.0).masked_fill(~allowed, float("-inf"))
    picked = torch.zeros_like(ranked, dtype=torch.bool).scatter_(-1, ranked.topk(k, dim=-1).indices, True)
    return picked & allowed


def isolated_selection(
    scores: torch.Tensor, gen_scores: torch.Tensor | None, valid: torch.Tensor, boundary: int | None, density: float
) -> torch.Tensor:
    """SparseD's isolated selection for one row: (H, nQ, nK) bool kept tiles from block scores (H, nQ, nK).

    Pass 1 keeps the top `density` of all real key blocks by `scores`, but only those before `boundary` (the prompt);
    pass 2 the top `density` of the real blocks from `boundary` on by `gen_scores` (the generated region's own
    softmax). `boundary` None or 0: one joint top-k.
    """
    n_k = scores.shape[-1]
    k_all = keep_count(density, max(1, int(valid.sum())))
    keep = _top(scores, valid, k_all)
    if boundary is None or not 0 < boundary < n_k:
        return keep
    in_prompt = torch.arange(n_k, device=scores.device) < boundary
    keep = keep & in_prompt
    gen_valid = valid & ~in_prompt
    n_gen = int(gen_valid.sum())
    if n_gen:
        keep = keep | _top(gen_scores if gen_scores is not None else scores, gen_valid, keep_count(density, n_gen))
    return keep


def valid_key_blocks(allowed: torch.Tensor | None, notified: torch.Tensor | None, b: int, nk: int, bs: int,
                     device: torch.device) -> torch.Tensor:  # fmt: skip
    """(B, nK) bool: key blocks holding at least one key some query may attend to (and a real token, if notified)."""
    keys = torch.ones(b, nk, dtype=torch.bool, device=device)
    if allowed is not None:
        keys = keys & allowed.any(dim=2).any(dim=1).expand(b, nk)  # (B, Nk)
    if notified is not None and tuple(notified.shape) == (b, nk):
        keys = keys & notified.to(device=device).bool()
    nkb = num_blocks(nk, bs)
    return F.pad(keys, (0, nkb * bs - nk)).view(b, nkb, bs).any(-1)


def diagonal_blocks(nq: int, nk: int, bs: int, device: torch.device) -> torch.Tensor:
    """(nQ, nK) bool: for each query block, the key block(s) at the same positions (queries end-aligned with keys)."""
    offset = nk - nq
    nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
    starts = torch.arange(nqb, device=device) * bs + offset
    ends = torch.clamp(torch.arange(1, nqb + 1, device=device) * bs, max=nq) - 1 + offset
    blocks = torch.arange(nkb, device=device)
    return (blocks[None, :] >= (starts // bs)[:, None]) & (blocks[None, :] <= (ends // bs)[:, None])


def prompt_boundary(prompt: int, nk: int, bs: int) -> int | None:
    """SparseD's prompt/generation split in key blocks: the first block wholly generated, else the last block."""
    if prompt <= 0 or prompt >= nk:
        return None
    return min(math.ceil(prompt / bs), num_blocks(nk, bs) - 1)


def sequence_window_scores(nq: int, nk: int, bs: int, device: torch.device) -> torch.Tensor:
    """(1, 1, nQ, nK) negative block distances along a 1-D sequence, queries end-aligned with the keys."""
    if nq == nk:
        return window_scores(TokenLayout(), nk, bs, device)
    centres_q = torch.arange(num_blocks(nq, bs), device=device) * bs + (nk - nq) + bs / 2
    centres_k = torch.arange(num_blocks(nk, bs), device=device) * bs + bs / 2
    return -(centres_q[:, None] - centres_k[None, :]).abs()[None, None].float()

"""Key-padding masks: an SDPA mask that only says which tokens are real, kept as one (B, Nk) vector.

Diffusion transformers with padded text pass SDPA either a key mask (B, 1, 1, Nk) or, as HunyuanVideo-1.5 does, the
outer product of a token mask with itself (B, 1, N, N): query i may attend key j iff both are real. Both factor into
a key vector and a query-row vector, so the engine never gathers or expands an N×N mask: the kernels take the key
vector (FlexAttention as a score bias, the reference as a (B, 1, 1, Nk) mask) and rows with no real key are zeroed,
as SDPA's safe softmax leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeyMask:
    """A mask that factors into `keys` (B, Nk), bool (True = may be attended) or additive, and the query rows that
    attend anything (`rows` (B, Nq) bool; None = every row)."""

    keys: torch.Tensor
    rows: torch.Tensor | None = None

    def as_attn_mask(self) -> torch.Tensor:
        """The key vector as an SDPA mask (B, 1, 1, Nk)."""
        return self.keys[:, None, None, :]

    def bias(self) -> torch.Tensor:
        """(B, Nk) fp32 additive bias: 0 where a key may be attended, -inf where not (bool), else the mask itself."""
        if self.keys.dtype == torch.bool:
            return torch.zeros(self.keys.shape, device=self.keys.device).masked_fill(~self.keys, float("-inf"))
        return self.keys.float()

    def zero_empty_rows(self, out: torch.Tensor) -> torch.Tensor:
        """`out` (B, H, Nq, D) with the rows that may attend no key set to 0."""
        if self.rows is None:
            return out
        return out.masked_fill(~self.rows[:, None, :, None], 0.0)


def factor_key_mask(mask: torch.Tensor | None, b: int, nq: int, nk: int) -> KeyMask | None:
    """The `KeyMask` of an SDPA mask broadcastable to (B, H, Nq, Nk), or None when it does not factor (per-head or
    per-query structure, e.g. causal): a key mask (…, 1, Nk), bool or additive, or a bool outer product of a query-row
    mask and a key mask (checked exactly: one count over the mask, one host sync)."""
    if mask is None or mask.dim() > 4 or mask.dim() < 1 or mask.shape[-1] != nk:
        return None
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (Bm, Hm, Qm, Nk)
    if m.shape[0] not in (1, b) or m.shape[1] != 1 or m.shape[2] not in (1, nq):
        return None
    if m.shape[2] == 1:
        if not (m.dtype == torch.bool or m.is_floating_point()):
            return None
        return KeyMask(m[:, 0, 0].expand(b, nk).contiguous())
    if m.dtype != torch.bool:
        return None
    m = m[:, 0]  # (Bm, Nq, Nk)
    rows, keys = m.any(-1), m.any(-2)  # (Bm, Nq), (Bm, Nk)
    # m ⊆ rows ⊗ keys always holds, so the counts are equal exactly when m is that outer product
    expected = rows.sum(-1, dtype=torch.int64) * keys.sum(-1, dtype=torch.int64)
    if not bool((m.sum((-1, -2), dtype=torch.int64) == expected).all()):
        return None
    return KeyMask(keys.expand(b, nk).contiguous(), rows.expand(b, nq).contiguous())

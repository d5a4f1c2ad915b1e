"""Re-ttention's statistical reshape (Chen et al., 2025): out = ρ·O_sparse + R, with ρ and R cached at refreshes.

ρ is the in-pattern softmax mass of each query row, exp(LSE_sparse − LSE_full); R = O_full − ρ·O_sparse is what
the pattern missed. At a refresh the pair reconstructs O_full exactly; on later sparse steps ρ grows by
`rho_growth` per step (the paper code's +0.04), modelling attention that localizes as denoising proceeds.
"""

from __future__ import annotations

import torch


def capture_statistics(
    out_full: torch.Tensor, lse_full: torch.Tensor, out_sparse: torch.Tensor, lse_sparse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ρ (B, H, N, 1) fp32 and R (B, H, N, D) in the output dtype, from full and sparse outputs and LSEs."""
    rho = torch.exp(lse_sparse.float() - lse_full.float()).nan_to_num(0.0)[..., None]  # (B, H, N, 1)
    residual = out_full.float() - rho * out_sparse.float()  # (B, H, N, D)
    return rho, residual.to(out_full.dtype)


def apply_reshape(
    out_sparse: torch.Tensor, rho: torch.Tensor, residual: torch.Tensor, growth: float, steps_since_refresh: int
) -> torch.Tensor:
    """ρ_k·O_sparse + R for the k-th sparse step after a refresh (k = 0 first), ρ_k = ρ + growth·k."""
    rho_k = (rho + growth * steps_since_refresh).to(out_sparse.dtype)  # (B, H, N, 1)
    return torch.addcmul(residual.to(out_sparse.dtype), rho_k, out_sparse)  # one fused pass in the model's dtype

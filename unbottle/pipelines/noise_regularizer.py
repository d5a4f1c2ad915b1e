"""The χ-norm regularizer of reward-guided noise optimization (ReNO, Eyring et al. 2024; CARINOX, Kasaei et al. 2025).

A d-dimensional standard normal ε has a norm ‖ε‖ that follows the χ distribution with d degrees of freedom, whose
log-density is (d − 1)·log‖ε‖ − ‖ε‖²/2 + const; K(ε) is that log-likelihood and the loss adds −γ·K(ε):

    reg(ε) = γ · (0.5·‖ε‖² − (d − 1)·log‖ε‖),        minimal at ‖ε‖ = √(d − 1)

so the optimized noise keeps the norm of a typical Gaussian sample (it concentrates at √d). Always computed in
float32 (in half precision the log-density underflows to −inf) on each sample's whole noise, whatever its layout.
"""

from __future__ import annotations

import torch


def chi_regularizer(noise: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, ...) noise → (B,) float32 `weight·(0.5‖ε‖² − (d−1)·log‖ε‖)`, d = numel per sample (ReNO / CARINOX)."""
    flat = noise.float().flatten(1)  # (B, d)
    d = flat.shape[1]
    norm = flat.norm(dim=1)  # (B,)
    return weight * (0.5 * norm.square() - (d - 1) * torch.log(norm))  # (B,)

"""Antialiased latent resizing for Bottleneck Sampling (Tian et al., 2025): bicubic, bilinear, Lanczos or nearest.

Images are resized as (B, C, H, W) and videos as (B, C, F, H, W), in space only (every frame alike). Downsampling
widens the kernel by the scale factor (antialiasing), as PIL does. The paper chose Lanczos (its Table 7, where
bicubic scored within 0.003 CLIP / ImageReward of it); our default is PyTorch's own antialiased bicubic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RESAMPLE_MODES = ("bicubic-aa", "bilinear-aa", "lanczos", "nearest")
LANCZOS_LOBES = 3


def _sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x == 0, torch.ones_like(x), torch.sin(math.pi * x) / (math.pi * x))


def lanczos_matrix(n_in: int, n_out: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_out, n_in) Lanczos-3 resampling weights, kernel widened by the scale when shrinking, rows summing to 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # antialiasing: a downsampling kernel covers `scale` input pixels per lobe
    centers = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * scale - 0.5  # (n_out,)
    distance = (torch.arange(n_in, dtype=torch.float64, device=device)[None, :] - centers[:, None]) / stretch
    weights = _sinc(distance) * _sinc(distance / LANCZOS_LOBES) * (distance.abs() < LANCZOS_LOBES)  # (n_out, n_in)
    return weights / weights.sum(dim=1, keepdim=True)  # at the borders: the kernel clipped to the image, renormalised


def _resize_2d(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, C, H, W) float32 → (N, C, h, w)."""
    if mode == "lanczos":
        rows = lanczos_matrix(x.shape[-2], size[0], x.device).to(x.dtype)  # (h, H)
        cols = lanczos_matrix(x.shape[-1], size[1], x.device).to(x.dtype)  # (w, W)
        return torch.einsum("hH,ncHW,wW->nchw", rows, x, cols)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    kernel = mode.removesuffix("-aa")
    return F.interpolate(x, size=size, mode=kernel, align_corners=False, antialias=True)


def resize_latents(latents: torch.Tensor, size: tuple[int, int], mode: str = "bicubic-aa") -> torch.Tensor:
    """Resize (B, C, H, W) or (B, C, F, H, W) latents to (h, w) in space; computed in float32, returned in kind."""
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {mode!r}")
    if tuple(latents.shape[-2:]) == tuple(size):
        return latents
    x = latents.float()
    if x.dim() == 5:  # (B, C, F, H, W) → (B·F, C, H, W): frames resized alike, never mixed
        b, c, f, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x = _resize_2d(x, size, mode).reshape(b, f, c, *size).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
    elif x.dim() == 4:
        x = _resize_2d(x, size, mode)
    else:
        raise ValueError(f"latents must be (B, C, H, W) or (B, C, F, H, W), got shape {tuple(latents.shape)}")
    return x.to(latents.dtype).contiguous()

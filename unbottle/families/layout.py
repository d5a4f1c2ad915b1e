"""Where tokens sit in a self-attention sequence, and how a family reads it from a denoiser forward's arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """Image tokens in raster order over `grid` = (F, H, W), plus `text_len` conditioning tokens before or after."""

    grid: tuple[int, int, int] | None = None  # None: unknown, tokens are a 1-D sequence
    text_len: int = 0
    text_first: bool = True

    def resolve(self, n: int) -> tuple[tuple[int, int, int], int, bool]:
        """(grid, text_len, text_first) for a layer that sees `n` tokens: joint, image-only, or downsampled (UNet)."""
        if self.grid is None:
            return (1, 1, n), 0, True
        f, h, w = self.grid
        image = f * h * w
        if n == image + self.text_len:
            return self.grid, self.text_len, self.text_first
        if n == image:
            return self.grid, 0, True
        for s in (2, 4, 8, 16, 32, 64):  # UNet levels: the grid downsampled by s
            g = (f, math.ceil(h / s), math.ceil(w / s))
            if g[0] * g[1] * g[2] == n:
                return g, 0, True
        return (1, 1, n), 0, True


def first_int(x: object) -> int:
    """`x` as an int, or its first element for a tuple/list (a config's patch size)."""
    return int(x[0] if isinstance(x, (tuple, list)) else x)


def call_timestep(bound: dict, name: str = "timestep") -> float | None:
    """The timestep argument `name` of a denoiser forward as a float (its first element for a tensor), or None."""
    t = bound.get(name)
    if t is None:
        return None
    return float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)


def text_length(bound: dict) -> int:
    """Text tokens of a forward: the length of its `encoder_hidden_states` (B, L, C), 0 without one."""
    text = bound.get("encoder_hidden_states")
    return int(text.shape[1]) if isinstance(text, torch.Tensor) else 0


def image_grid(model: torch.nn.Module, bound: dict, key: str = "hidden_states") -> tuple[int, int, int]:
    """(1, H / patch, W / patch) of a (B, C, H, W) image argument."""
    p = first_int(getattr(model.config, "patch_size", 1) or 1)
    h, w = bound[key].shape[-2:]
    return (1, h // p, w // p)


def video_grid(model: torch.nn.Module, bound: dict) -> tuple[int, int, int]:
    """(F, H, W) tokens of a (B, C, F, H, W) `hidden_states`: patch (t, h, w), or patch_size with patch_size_t."""
    f, h, w = bound["hidden_states"].shape[2:]
    patch = model.config.patch_size
    if isinstance(patch, (tuple, list)):
        pt, ph, pw = patch
    else:
        pt, ph, pw = getattr(model.config, "patch_size_t", 1) or 1, patch, patch
    return (f // pt, h // ph, w // pw)

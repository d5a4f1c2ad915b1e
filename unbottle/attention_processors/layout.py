"""Where tokens sit in a self-attention sequence: the latent grid (frames × height × width) and the text tokens."""

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


def token_coordinates(
    layout: TokenLayout, n: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (frame, row, column) coordinates (n, 3) fp32 and a text flag (n,) bool; text tokens get coords 0."""
    (f, h, w), text_len, text_first = layout.resolve(n)
    image = torch.stack(
        torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1
    ).reshape(-1, 3).float()  # (F·H·W, 3)  # fmt: skip
    text = torch.zeros(text_len, 3)
    coords = torch.cat([text, image] if text_first else [image, text])
    is_text = torch.zeros(n, dtype=torch.bool)
    if text_len:
        is_text[:text_len] = text_first
        is_text[n - text_len :] = not text_first
    return coords.to(device), is_text.to(device)

"""Per-token coordinates of a self-attention sequence laid out by a `TokenLayout` (latent grid and text tokens)."""

from __future__ import annotations

import torch

from ..families.layout import TokenLayout


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

"""Qwen-Image (QwenImageTransformer2DModel): joint text-image attention, text first, packed 2×2 latent tokens."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # img_shapes: per sample, the (F, H, W) token grids of its images; one grid = the latent alone (edit models append
    # reference images: their tokens follow the latent's and the sequence stays 1-D)
    shapes = bound.get("img_shapes")
    n = bound["hidden_states"].shape[1]
    grid = None
    if shapes:
        first = shapes[0]
        first = [first] if isinstance(first, tuple) else list(first)
        if len(first) == 1 and len(first[0]) == 3:
            f, h, w = (int(v) for v in first[0])
            grid = (f, h, w) if f * h * w == n else None
    return TokenLayout(grid, text_length(bound), text_first=True)


QWEN_IMAGE = Family(
    "QwenImage",
    model_classes=("QwenImageTransformer2DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn$", _layout),
)

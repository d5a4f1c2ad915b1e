"""DiT (DiTTransformer2DModel): class-conditioned, image-only self-attention over the patch grid (no text tokens)."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound), 0)


DIT = Family(
    "DiT",
    model_classes=("DiTTransformer2DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

"""Latte (LatteTransformer3DModel): the spatial blocks' self-attention, one frame's (1, H, W) patch grid per batch
row; the temporal blocks (one sequence of F tokens per patch) stay dense."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound))  # the spatial blocks see (B·F, H·W) tokens


LATTE = Family(
    "Latte",
    model_classes=("LatteTransformer3DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

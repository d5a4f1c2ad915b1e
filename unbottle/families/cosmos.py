"""Cosmos (CosmosTransformer3DModel): video-only self-attention over the (F, H, W) patch grid; text is
cross-attention."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


COSMOS = Family(
    "Cosmos",
    model_classes=("CosmosTransformer3DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

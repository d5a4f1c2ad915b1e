"""Wan VACE (WanVACETransformer3DModel): self-attention over the video tokens, in the main and the control blocks."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))  # control tokens are padded to the video grid's length


WAN_VACE = Family(
    "Wan-VACE",
    model_classes=("WanVACETransformer3DModel",),
    attention=SelfAttention(r"^(vace_)?blocks\.\d+\.attn1$", _layout),
)

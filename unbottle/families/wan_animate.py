"""Wan-Animate (WanAnimateTransformer3DModel): self-attention over the video tokens (reference frame first, pose
added in place); the face adapters are cross-attention and stay dense."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


WAN_ANIMATE = Family(
    "Wan-Animate",
    model_classes=("WanAnimateTransformer3DModel",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout),
)

"""SkyReels-V2 (SkyReelsV2Transformer3DModel): self-attention over the video tokens only (diffusion forcing adds a
frame-block causal mask, the same tokens)."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


SKYREELS_V2 = Family(
    "SkyReels-V2",
    model_classes=("SkyReelsV2Transformer3DModel",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout),
)

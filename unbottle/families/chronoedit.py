"""ChronoEdit (ChronoEditTransformer3DModel): self-attention over the video tokens only, as in Wan."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


CHRONOEDIT = Family(
    "ChronoEdit",
    model_classes=("ChronoEditTransformer3DModel",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout),
)

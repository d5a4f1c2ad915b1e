"""CogView3-Plus and CogView4 (CogView3PlusTransformer2DModel, CogView4Transformer2DModel): joint attention over the
text then the image patches, text first."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, image_grid, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound), text_length(bound), text_first=True)


COGVIEW4 = Family(
    "CogView4",
    model_classes=("CogView4Transformer2DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

COGVIEW3_PLUS = Family(
    "CogView3Plus",
    model_classes=("CogView3PlusTransformer2DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

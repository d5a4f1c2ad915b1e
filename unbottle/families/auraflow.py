"""AuraFlow (AuraFlowTransformer2DModel): joint attention, register tokens then text first, then the image patches."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, image_grid, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    registers = int(model.register_tokens.shape[1])  # learned tokens the model puts before the text
    return TokenLayout(image_grid(model, bound), registers + text_length(bound), text_first=True)


AURAFLOW = Family(
    "AuraFlow",
    model_classes=("AuraFlowTransformer2DModel",),
    attention=SelfAttention(r"^(joint_transformer_blocks|single_transformer_blocks)\.\d+\.attn$", _layout),
)

"""Bria (BriaTransformer2DModel): FLUX.1's blocks, joint text-image attention, text first, grid from `img_ids`."""

from __future__ import annotations

from .family import Family, SelfAttention
from .flux import _layout

BRIA = Family(
    "Bria",
    model_classes=("BriaTransformer2DModel",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
)

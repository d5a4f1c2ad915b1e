"""Ovis-Image (OvisImageTransformer2DModel): FLUX.1-style joint text-image attention, text first, grid from
`img_ids`."""

from __future__ import annotations

from .family import Family, SelfAttention
from .flux import _layout

OVIS_IMAGE = Family(
    "OvisImage",
    model_classes=("OvisImageTransformer2DModel",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
)

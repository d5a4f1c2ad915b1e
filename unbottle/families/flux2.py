"""FLUX.2 (Flux2Transformer2DModel): joint text-image attention, text first, grid from `img_ids` (T, H, W, L)."""

from __future__ import annotations

from .family import Family, SelfAttention
from .flux import _layout

# img_ids columns 1 and 2 are the row and column, as in FLUX.1; reference-image tokens appended to the latent's make
# the count disagree with the grid, and the sequence stays 1-D
FLUX2 = Family(
    "Flux2",
    model_classes=("Flux2Transformer2DModel",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
)

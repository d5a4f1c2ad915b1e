"""Lumina-Image 2.0 (Lumina2Transformer2DModel): joint attention, the caption's real tokens first, then the image
patches; the image-only noise refiner too (the text-only context refiner stays dense)."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # the joint sequence is [caption[:real tokens], image, padding]: a batch whose captions differ in length pads at
    # the end, and the longest caption sets the split
    mask = bound["encoder_attention_mask"]  # (B, L), 1 = real token
    return TokenLayout(image_grid(model, bound), int(mask.sum(dim=1).max()), text_first=True)


LUMINA2 = Family(
    "Lumina2",
    model_classes=("Lumina2Transformer2DModel",),
    attention=SelfAttention(r"^(layers|noise_refiner)\.\d+\.attn$", _layout),
)

"""Kandinsky 5 (Kandinsky5Transformer3DModel): visual self-attention, video tokens only; text by cross-attention."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    sparse = bound.get("sparse_params")
    if isinstance(sparse, dict) and sparse.get("to_fractal"):  # tokens regrouped in 8×8 tiles: not raster order
        return TokenLayout()
    f, h, w = bound["hidden_states"].shape[1:4]  # (B, F, H, W, C), channels last
    pt, ph, pw = model.config.patch_size
    return TokenLayout((f // pt, h // ph, w // pw))


KANDINSKY5 = Family(
    "Kandinsky5",
    model_classes=("Kandinsky5Transformer3DModel",),
    # the visual blocks' self-attention; not the text encoder blocks' nor the visual blocks' cross-attention
    attention=SelfAttention(r"^visual_transformer_blocks\.\d+\.self_attention$", _layout),
)

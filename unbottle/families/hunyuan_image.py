"""HunyuanImage 2.1 (HunyuanImageTransformer2DModel): joint attention, image tokens first, then the text."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # hidden_states (B, C, H, W) or (B, C, F, H, W), patch_size (ph, pw) or (pt, ph, pw)
    sizes = bound["hidden_states"].shape[2:]
    tokens = tuple(int(d) // int(p) for d, p in zip(sizes, model.config.patch_size, strict=True))
    grid = tokens if len(tokens) == 3 else (1, *tokens)
    text = int(bound["encoder_hidden_states"].shape[1])
    second = bound.get("encoder_hidden_states_2")
    if model.context_embedder_2 is not None and isinstance(second, torch.Tensor):  # ByT5 tokens joined to the text
        text += int(second.shape[1])
    return TokenLayout(grid, text, text_first=False)


HUNYUAN_IMAGE = Family(
    "HunyuanImage",
    model_classes=("HunyuanImageTransformer2DModel",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),  # not the text refiner's
)

"""CogVideoX (CogVideoXTransformer3DModel): text tokens first in each block's joint sequence."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, text_length
from .parallel import cogvideox_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:  # hidden_states (B, F, C, H, W)
    f, _, h, w = bound["hidden_states"].shape[1:]
    p, pt = model.config.patch_size, model.config.patch_size_t or 1
    return TokenLayout(((f + pt - 1) // pt, h // p, w // p), text_length(bound), text_first=True)


COGVIDEOX = Family(
    "CogVideoX",
    model_classes=("CogVideoXTransformer3DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    parallel_plan=cogvideox_plan,
)

"""ConsisID (ConsisIDTransformer3DModel): joint attention, text first, over frame-wise patched video tokens."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:  # hidden_states (B, F, C, H, W)
    f, _, h, w = bound["hidden_states"].shape[1:]
    p = model.config.patch_size  # spatial only: every frame is its own token plane
    return TokenLayout((f, h // p, w // p), text_length(bound), text_first=True)


CONSISID = Family(
    "ConsisID",
    model_classes=("ConsisIDTransformer3DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

"""EasyAnimate (EasyAnimateTransformer3DModel): joint attention, text first (the text encoder's tokens, then the
T5 tokens when given), then the video's (F, H, W) patch grid."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, first_int, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    f, h, w = bound["hidden_states"].shape[2:]
    p = first_int(model.config.patch_size)  # spatial patches only: every frame stays a token frame
    t5 = bound.get("encoder_hidden_states_t5")
    text = text_length(bound) + (int(t5.shape[1]) if isinstance(t5, torch.Tensor) else 0)
    return TokenLayout((f, h // p, w // p), text, text_first=True)


EASYANIMATE = Family(
    "EasyAnimate",
    model_classes=("EasyAnimateTransformer3DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

"""HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel): joint attention, video tokens first, then the conditioning."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # conditioning after the video tokens: image-encoder tokens, ByT5 tokens and MLLM text tokens, valid ones first
    # and padding after (the attention mask hides the padding; the count is what places the split)
    conditioning = sum(
        int(bound[key].shape[1])
        for key in ("encoder_hidden_states", "encoder_hidden_states_2", "image_embeds")
        if isinstance(bound.get(key), torch.Tensor)
    )
    return TokenLayout(video_grid(model, bound), conditioning, text_first=False)


HUNYUAN_VIDEO15 = Family(
    "HunyuanVideo-1.5",
    model_classes=("HunyuanVideo15Transformer3DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn$", _layout),  # not the text refiner's attention
)

"""Latte (LatteTransformer3DModel, LattePipeline): the spatial blocks' self-attention, one frame's (1, H, W) patch
grid per batch row; the temporal blocks (one sequence of F tokens per patch) stay dense. T5 text (at most 120 tokens)
is the spatial blocks' cross-attention, through a caption projection."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, SelfAttention
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound))  # the spatial blocks see (B·F, H·W) tokens


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    return pipe._text_preprocessing(prompt, clean_caption=bool(arguments.get("clean_caption", False)))[0]


LATTE = Family(
    "Latte",
    model_classes=("LatteTransformer3DModel",),
    pipeline_classes=("LattePipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.caption_projection, _text,  # no length argument: 120 tokens, fixed
        phrase_arguments=(("clean_caption", False),),  # the phrases come from the already-processed text
    ),
)

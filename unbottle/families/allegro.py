"""Allegro (AllegroTransformer3DModel, AllegroPipeline): video-only self-attention over the (F, H, W) patch grid;
T5 text is cross-attention, through a caption projection."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    return pipe._text_preprocessing(prompt, clean_caption=bool(arguments.get("clean_caption", False)))[0]


ALLEGRO = Family(
    "Allegro",
    model_classes=("AllegroTransformer3DModel",),
    pipeline_classes=("AllegroPipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.caption_projection, _text, max_length_arg="max_sequence_length",
        phrase_arguments=(("clean_caption", False),),  # the phrases come from the already-processed text
    ),
)

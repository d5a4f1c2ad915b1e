"""HunyuanVideo (HunyuanVideoTransformer3DModel, HunyuanVideoPipeline): joint attention, true-CFG negatives."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import video_vae
from .layout import TokenLayout, text_length, video_grid
from .parallel import TEXT_MASK_REFUSAL


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound), text_length(bound), text_first=False)


HUNYUAN_VIDEO = Family(
    "HunyuanVideo",
    model_classes=("HunyuanVideoTransformer3DModel",),
    pipeline_classes=("HunyuanVideoPipeline",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16),
    prompt=PromptEncoding(("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"), separate_negative=True),
    flow_matching=True,
    stock_steps=50,
    parallel_refusal=TEXT_MASK_REFUSAL,
)

"""Stable Diffusion 3 (SD3Transformer2DModel, StableDiffusion3Pipeline): joint attention, image tokens first."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_noise, image_vae, sample_size_default
from .layout import TokenLayout, image_grid, text_length
from .parallel import sd3_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound), text_length(bound), text_first=False)


SD3 = Family(
    "SD3",
    model_classes=("SD3Transformer2DModel",),
    pipeline_classes=("StableDiffusion3Pipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn2?$", _layout),
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=image_noise, default_size=sample_size_default),
    prompt=PromptEncoding(
        ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    ),
    flow_matching=True,
    stock_steps=28,
    parallel_plan=sd3_plan,
)

"""Wan 2.1 (WanTransformer3DModel, WanPipeline): video latents, UMT5 text, noise drawn in float32."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .latents import signature_size_default, video_noise, video_vae
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(prompt)


WAN = Family(
    "Wan",
    model_classes=("WanTransformer3DModel",),
    pipeline_classes=("WanPipeline",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout),
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=video_noise,
                    default_size=signature_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.condition_embedder.text_embedder, _text,
        max_length_arg="max_sequence_length", exact=True,  # text-to-video WanPipeline itself
    ),
    flow_matching=True,
    stock_steps=50,
)

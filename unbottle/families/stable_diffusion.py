"""Stable Diffusion 1.x/2.x (UNet2DConditionModel, StableDiffusionPipeline): UNet self-attention at every level."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .latents import config_size_default, image_noise, image_vae
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound, "sample"))


# the UNet's self-attention, shared with SDXL (one model class: a model lookup cannot tell them apart)
UNET_ATTENTION = SelfAttention(r"\.attn1$", _layout)


def prompt_text(pipe: object, prompt: str, arguments: dict) -> str:
    """The prompt as the CLIP tokenizer sees it: unchanged."""
    return prompt


def no_projection(model: torch.nn.Module) -> None:
    """UNet cross-attention reads the text encoder's states directly."""
    return None


STABLE_DIFFUSION = Family(
    "StableDiffusion",
    model_classes=("UNet2DConditionModel",),
    pipeline_classes=("StableDiffusionPipeline",),
    attention=UNET_ATTENTION,
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=image_noise, default_size=config_size_default),
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    guidance=CrossAttentionText("unet", no_projection, prompt_text),
)

"""Lumina-Image 2.0 (Lumina2Transformer2DModel, Lumina2Pipeline): joint attention, the caption's real tokens first,
then the image patches; the image-only noise refiner too (the text-only context refiner stays dense)."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_vae, sample_size_default
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # the joint sequence is [caption[:real tokens], image, padding]: a batch whose captions differ in length pads at
    # the end, and the longest caption sets the split
    mask = bound["encoder_attention_mask"]  # (B, L), 1 = real token
    return TokenLayout(image_grid(model, bound), int(mask.sum(dim=1).max()), text_first=True)


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w): the latent sides rounded down to even, as the pipeline's prepare_latents does
    f = pipe.vae_scale_factor
    return pipe.transformer.config.in_channels, 2 * (height // (f * 2)), 2 * (width // (f * 2))


LUMINA2 = Family(
    "Lumina2",
    model_classes=("Lumina2Transformer2DModel",),
    pipeline_classes=("Lumina2Pipeline",),
    attention=SelfAttention(r"^(layers|noise_refiner)\.\d+\.attn$", _layout,
                            timestep_rising=True),  # the pipeline passes t = 1 − σ
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=_noise, default_size=sample_size_default),
    # one encode_prompt call (system prompt included) returns the negatives too; CFG truncation and renormalization
    # stay the call's own options
    prompt=PromptEncoding(
        ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    ),
    flow_matching=True,
    stock_steps=30,
)

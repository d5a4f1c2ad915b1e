"""SDXL (UNet2DConditionModel, StableDiffusionXLPipeline): two text encoders, pooled embeddings."""

from __future__ import annotations

from .family import CrossAttentionText, Family, Latents, PromptEncoding
from .latents import image_noise, image_vae, sample_size_default
from .stable_diffusion import UNET_ATTENTION, no_projection, prompt_text

SDXL = Family(
    "SDXL",
    model_classes=("UNet2DConditionModel",),
    pipeline_classes=("StableDiffusionXLPipeline",),
    attention=UNET_ATTENTION,
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=image_noise, default_size=sample_size_default),
    prompt=PromptEncoding(
        ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    ),
    guidance=CrossAttentionText(
        "unet", no_projection, prompt_text, second_prompt="prompt_2",
        # a phrase is encoded through both encoders at once (their token states concatenate), without the
        # second prompt, negatives or pooled embeddings
        phrase_arguments=(("prompt_2", None), ("negative_prompt", None), ("negative_prompt_2", None),
                          ("pooled_prompt_embeds", None), ("negative_pooled_prompt_embeds", None)),
    ),  # fmt: skip
)

"""AuraFlow (AuraFlowTransformer2DModel, AuraFlowPipeline): joint attention, register tokens then text first, then the
image patches."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_noise, image_vae, signature_size_default
from .layout import TokenLayout, image_grid, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    registers = int(model.register_tokens.shape[1])  # learned tokens the model puts before the text
    return TokenLayout(image_grid(model, bound), registers + text_length(bound), text_first=True)


AURAFLOW = Family(
    "AuraFlow",
    model_classes=("AuraFlowTransformer2DModel",),
    pipeline_classes=("AuraFlowPipeline",),
    attention=SelfAttention(r"^(joint_transformer_blocks|single_transformer_blocks)\.\d+\.attn$", _layout),
    # the latent grid itself (the transformer patchifies); check_inputs' multiple of 2 × VAE is VAE × patch size 2
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=image_noise, default_size=signature_size_default),
    # one encode_prompt call returns the negatives too (plain CFG); the call needs each embedding's attention mask
    prompt=PromptEncoding(
        ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    ),
    flow_matching=True,
    stock_steps=50,
)

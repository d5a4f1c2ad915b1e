"""CogView3-Plus and CogView4 (CogView3PlusTransformer2DModel, CogView4Transformer2DModel; CogView4Pipeline): joint
attention over the text then the image patches, text first."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import config_size_default, image_noise, image_vae
from .layout import TokenLayout, image_grid, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound), text_length(bound), text_first=True)


COGVIEW4 = Family(
    "CogView4",
    model_classes=("CogView4Transformer2DModel",),
    pipeline_classes=("CogView4Pipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    # the latent grid itself, drawn in float32 whatever the weights; check_inputs wants height/width multiples of 16
    latents=Latents(video=False, vae_factor=image_vae, size_multiple=16, noise_grid=image_noise,
                    default_size=config_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),  # plain CFG: one encode_prompt call
    # the pipeline builds its own timesteps and μ (√-token-count linear shift) but a stage scheduler takes its grid;
    # a re-noised stage with shift=None gets the scheduler config's Flux-style μ, not that √ form: give Stage.shift
    flow_matching=True,
    stock_steps=50,
)

# CogView3PlusPipeline: sparse attention only (a DDIM / DPM-Solver scheduler, not flow matching)
COGVIEW3_PLUS = Family(
    "CogView3Plus",
    model_classes=("CogView3PlusTransformer2DModel",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

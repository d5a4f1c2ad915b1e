"""PixArt-α/Σ (PixArtTransformer2DModel, PixArtAlphaPipeline/PixArtSigmaPipeline): T5 text, aspect-ratio bins."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .latents import config_size_default, image_noise, image_vae
from .layout import TokenLayout, image_grid
from .parallel import pixart_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(image_grid(model, bound))


def _bins(pipe: object) -> dict | None:
    """PixArt's aspect-ratio bins for its transformer's sample size (the pipeline's own tables), or None."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

    bins = {256: ASPECT_RATIO_2048_BIN, 128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}
    return bins.get(pipe.transformer.config.sample_size)


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    return pipe._text_preprocessing(prompt, clean_caption=bool(arguments.get("clean_caption", False)))[0]


PIXART = Family(
    "PixArt",
    model_classes=("PixArtTransformer2DModel",),
    pipeline_classes=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=image_noise, default_size=config_size_default,
                    resolution_bins=_bins),  # fmt: skip
    prompt=PromptEncoding(
        ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    ),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.caption_projection, _text, max_length_arg="max_sequence_length",
        phrase_arguments=(("clean_caption", False),),  # the phrases come from the already-processed text
    ),
    parallel_plan=pixart_plan,
)

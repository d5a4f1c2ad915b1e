"""Wan VACE (WanVACETransformer3DModel): self-attention over the video tokens, in the main and the control blocks.
Pipeline parts for WanVACEPipeline: Wan's latents and text; the control stream (video, mask, reference images, or
without them an all-zero video under an all-ones mask) is built by the pipeline at each call's size."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .latents import rounded_video_noise, signature_size_default, video_vae
from .layout import TokenLayout, video_grid
from .parallel import vace_blocks_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))  # control tokens are padded to the video grid's length


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    from diffusers.pipelines.wan.pipeline_wan_vace import prompt_clean

    return prompt_clean(prompt)


WAN_VACE = Family(
    "Wan-VACE",
    model_classes=("WanVACETransformer3DModel",),
    pipeline_classes=("WanVACEPipeline",),
    attention=SelfAttention(r"^(vace_)?blocks\.\d+\.attn1$", _layout),
    # noise search: the noise of calls without reference_images (each reference image adds a latent frame)
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=rounded_video_noise,
                    default_size=signature_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.condition_embedder.text_embedder, _text,
        max_length_arg="max_sequence_length", exact=True,
    ),
    flow_matching=True,
    stock_steps=50,
    parallel_plan=vace_blocks_plan,  # Wan's plan and the control blocks': diffusers gives this class none
)

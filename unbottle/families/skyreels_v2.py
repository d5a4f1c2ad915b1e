"""SkyReels-V2 (SkyReelsV2Transformer3DModel): self-attention over the video tokens only (diffusion forcing adds a
frame-block causal mask, the same tokens). Pipeline parts for the text-to-video SkyReelsV2Pipeline, which is Wan's
(UMT5 text, noise drawn in float32, UniPC in flow mode: bottleneck stages run the stage scheduler in its place)."""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .latents import rounded_video_noise, signature_size_default, video_vae
from .layout import TokenLayout, video_grid
from .parallel import video_blocks_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


def _text(pipe: object, prompt: str, arguments: dict) -> str:
    from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2 import prompt_clean

    return prompt_clean(prompt)


SKYREELS_V2 = Family(
    "SkyReels-V2",
    model_classes=("SkyReelsV2Transformer3DModel",),
    pipeline_classes=("SkyReelsV2Pipeline",),  # text-to-video; diffusion forcing steps frames on a timestep matrix
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout),
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=rounded_video_noise,
                    default_size=signature_size_default, float32_noise=True),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    guidance=CrossAttentionText(
        "transformer", lambda model: model.condition_embedder.text_embedder, _text,
        max_length_arg="max_sequence_length", exact=True,
    ),
    flow_matching=True,
    stock_steps=50,
    parallel_plan=video_blocks_plan,  # Wan's own plan fits: diffusers gives this class none
)

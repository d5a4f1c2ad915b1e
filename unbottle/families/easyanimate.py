"""EasyAnimate (EasyAnimateTransformer3DModel, EasyAnimatePipeline): joint attention, text first (the text encoder's
tokens, then the T5 tokens when given), then the video's (F, H, W) patch grid; bottleneck sampling and noise search
on the V5.1 text-to-video pipeline (Qwen2-VL text, masks beside the embeddings)."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import signature_size_default, video_noise, video_vae
from .layout import TokenLayout, first_int, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    f, h, w = bound["hidden_states"].shape[2:]
    p = first_int(model.config.patch_size)  # spatial patches only: every frame stays a token frame
    t5 = bound.get("encoder_hidden_states_t5")
    text = text_length(bound) + (int(t5.shape[1]) if isinstance(t5, torch.Tensor) else 0)
    return TokenLayout((f, h // p, w // p), text, text_first=True)


EASYANIMATE = Family(
    "EasyAnimate",
    model_classes=("EasyAnimateTransformer3DModel",),
    pipeline_classes=("EasyAnimatePipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    # noise drawn in the text encoder's dtype, as the embeddings; (C, 1 + (F − 1)/4, h, w) from the causal VAE
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=16, noise_grid=video_noise,
                    default_size=signature_size_default),  # fmt: skip
    prompt=PromptEncoding(
        ("prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask", "negative_prompt_attention_mask")
    ),
    # no structured guidance: the text joins the video tokens in one joint attention, not a cross-attention
    flow_matching=True,
    stock_steps=50,
)

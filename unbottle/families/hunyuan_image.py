"""HunyuanImage 2.1 (HunyuanImageTransformer2DModel, HunyuanImagePipeline): joint attention, image tokens first, then
the text; latents (B, C, h, w) at the VAE's ×32, one token per latent position."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_noise, image_vae, sample_size_default
from .layout import TokenLayout
from .parallel import TEXT_MASK_REFUSAL


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # hidden_states (B, C, H, W) or (B, C, F, H, W), patch_size (ph, pw) or (pt, ph, pw)
    sizes = bound["hidden_states"].shape[2:]
    tokens = tuple(int(d) // int(p) for d, p in zip(sizes, model.config.patch_size, strict=True))
    grid = tokens if len(tokens) == 3 else (1, *tokens)
    text = int(bound["encoder_hidden_states"].shape[1])
    second = bound.get("encoder_hidden_states_2")
    if model.context_embedder_2 is not None and isinstance(second, torch.Tensor):  # ByT5 tokens joined to the text
        text += int(second.shape[1])
    return TokenLayout(grid, text, text_first=False)


HUNYUAN_IMAGE = Family(
    "HunyuanImage",
    model_classes=("HunyuanImageTransformer2DModel",),
    pipeline_classes=("HunyuanImagePipeline",),  # the base pipeline; the refiner re-noises an image it is given
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),  # not the text refiner's
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=image_noise, default_size=sample_size_default),
    # encode_prompt → Qwen2.5-VL and ByT5 (glyph text) embeddings with masks; its guider's unconditional branch: the
    # negative through a second call
    prompt=PromptEncoding(("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2"),
                          separate_negative=True),  # fmt: skip
    flow_matching=True,
    stock_steps=50,
    parallel_refusal=TEXT_MASK_REFUSAL,
)

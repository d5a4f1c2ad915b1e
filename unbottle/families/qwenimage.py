"""Qwen-Image (QwenImageTransformer2DModel, QwenImagePipeline): joint text-image attention, text first, packed 2×2
latent tokens."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_vae, sample_size_default
from .layout import TokenLayout, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # img_shapes: per sample, the (F, H, W) token grids of its images; one grid = the latent alone (edit models append
    # reference images: their tokens follow the latent's and the sequence stays 1-D)
    shapes = bound.get("img_shapes")
    n = bound["hidden_states"].shape[1]
    grid = None
    if shapes:
        first = shapes[0]
        first = [first] if isinstance(first, tuple) else list(first)
        if len(first) == 1 and len(first[0]) == 3:
            f, h, w = (int(v) for v in first[0])
            grid = (f, h, w) if f * h * w == n else None
    return TokenLayout(grid, text_length(bound), text_first=True)


def unpack(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    """(B, h/2 · w/2, 4C) packed tokens → (B, C, h, w), by the pipeline's own `_unpack_latents` (its frame axis of 1
    dropped)."""
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)[:, :, 0]  # (B, C, 1, h, w) → 4-D


def pack(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2 · w/2, 4C) packed tokens, by the pipeline's own `_pack_latents`."""
    return pipe._pack_latents(grid, *grid.shape)


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w): the pipeline draws (B, 1, C, h, w), the same numbers in the same order; latent sides rounded down to
    # even, C = transformer channels / (2 × 2)
    f = pipe.vae_scale_factor
    return pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2))


QWEN_IMAGE = Family(
    "QwenImage",
    model_classes=("QwenImageTransformer2DModel",),
    pipeline_classes=("QwenImagePipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn$", _layout),
    # packing 1: the pipeline's 2×2 packing is the transformer's own patch_size 2, which `Latents` already counts
    latents=Latents(video=False, vae_factor=image_vae, to_grid=unpack, from_grid=pack, noise_grid=_noise,
                    default_size=sample_size_default),  # fmt: skip
    # encode_prompt → (prompt_embeds, prompt_embeds_mask; None when no token is padding); true CFG: a second call
    prompt=PromptEncoding(("prompt_embeds", "prompt_embeds_mask"), separate_negative=True),
    flow_matching=True,
    stock_steps=50,
)

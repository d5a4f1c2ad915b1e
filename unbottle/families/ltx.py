"""LTX-Video (LTXVideoTransformer3DModel, LTXPipeline): patchified, packed video latent tokens."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import latent_frames, video_vae
from .layout import TokenLayout


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    p, pt = model.config.patch_size, model.config.patch_size_t
    return TokenLayout((bound["num_frames"] // pt, bound["height"] // p, bound["width"] // p))


def unpack(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int) -> torch.Tensor:
    """(B, F·h·w / patches, C·patches) tokens → (B, C, F, h, w), by the pipeline's own `_unpack_latents`."""
    r = pipe.vae_spatial_compression_ratio
    return pipe._unpack_latents(
        latents, latent_frames(pipe, frames), height // r, width // r, pipe.transformer_spatial_patch_size,
        pipe.transformer_temporal_patch_size,
    )  # fmt: skip


def pack(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) → (B, F·h·w / patches, C·patches) tokens, by the pipeline's own `_pack_latents`."""
    return pipe._pack_latents(grid, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)


LTX = Family(
    "LTX-Video",
    model_classes=("LTXVideoTransformer3DModel",),
    pipeline_classes=("LTXPipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    latents=Latents(video=True, vae_factor=video_vae, size_multiple=32, to_grid=unpack, from_grid=pack),
    prompt=PromptEncoding(
        ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    ),
    flow_matching=True,
)

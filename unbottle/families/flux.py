"""FLUX.1 (FluxTransformer2DModel, FluxPipeline): joint text-image attention, 2×2-packed latent tokens."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_vae, sample_size_default
from .layout import TokenLayout, text_length


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    ids = bound.get("img_ids")
    n = bound["hidden_states"].shape[1]
    if ids is None:
        return TokenLayout(None, text_length(bound))
    ids = ids[0] if ids.dim() == 3 else ids  # (N, 3): (index, row, column)
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    return TokenLayout((1, h, w) if h * w == n else None, text_length(bound), text_first=True)


def unpack(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    """(B, h/2 · w/2, 4C) packed tokens → (B, C, h, w), by the pipeline's own `_unpack_latents`."""
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def pack(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2 · w/2, 4C) packed tokens, by the pipeline's own `_pack_latents`."""
    return pipe._pack_latents(grid, *grid.shape)


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w) before packing: latent sides rounded down to even, C = transformer channels / (2 × 2)
    f = pipe.vae_scale_factor
    return pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2))


FLUX = Family(
    "Flux",
    model_classes=("FluxTransformer2DModel",),
    pipeline_classes=("FluxPipeline",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    latents=Latents(video=False, vae_factor=image_vae, packing=2, to_grid=unpack, from_grid=pack, noise_grid=_noise,
                    default_size=sample_size_default),  # fmt: skip
    prompt=PromptEncoding(("prompt_embeds", "pooled_prompt_embeds", None), separate_negative=True),
    flow_matching=True,
    stock_steps=50,
)

"""FLUX.2 (Flux2Transformer2DModel; Flux2Pipeline, Flux2KleinPipeline): joint text-image attention, text first, grid
from `img_ids` (T, H, W, L); latents patchified 2×2, normalized by the VAE's batch-norm statistics, then packed."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .flux import _layout
from .latents import image_vae, sample_size_default


def _statistics(pipe: object, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE's batch norm over the patchified channels, (1, 4C, 1, 1), as the pipeline reads them."""
    bn, eps = pipe.vae.bn, pipe.vae.config.batch_norm_eps
    mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(like.device, like.dtype)
    return mean, std


def _patch_channels(pipe: object) -> int:
    """4C: the channels of a 2×2-patchified latent, as the pipeline counts them from the transformer's input."""
    return pipe.transformer.config.in_channels // 4 * 4


def unpack(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    """The pipeline's `output_type="latent"` → (B, C, h, w) normalized latent grid, by the pipeline's own functions.

    Flux2Pipeline returns its (B, h/2 · w/2, 4C) normalized tokens: unpacked by their position ids, unpatchified.
    Flux2KleinPipeline returns the (B, C, h, w) VAE latents it would decode: patchified, normalized, unpatchified."""
    if latents.dim() == 3:
        f = pipe.vae_scale_factor
        shape = (latents.shape[0], 1, height // (f * 2), width // (f * 2))  # (B, ·, h/2, w/2): the ids' grid
        ids = pipe._prepare_latent_ids(latents.new_empty(shape)).to(latents.device)  # (B, h/2 · w/2, 4)
        patches = pipe._unpack_latents_with_ids(latents, ids)  # (B, 4C, h/2, w/2)
    else:
        mean, std = _statistics(pipe, latents)
        patches = (pipe._patchify_latents(latents) - mean) / std  # (B, 4C, h/2, w/2)
    return pipe._unpatchify_latents(patches)  # (B, C, h, w)


def patchify(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latent grid → (B, 4C, h/2, w/2), the pipeline's `latents=`, by its own `_patchify_latents`; a
    (B, 4C, h/2, w/2) grid (the noise as the pipeline draws it) is that already."""
    if grid.shape[1] == _patch_channels(pipe):
        return grid
    return pipe._patchify_latents(grid)


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (4C, h/2, w/2): the pipeline draws its noise patchified, then packs it (latent sides rounded down to even)
    f = pipe.vae_scale_factor
    return _patch_channels(pipe), height // (f * 2), width // (f * 2)


# img_ids columns 1 and 2 are the row and column, as in FLUX.1; reference-image tokens appended to the latent's make
# the count disagree with the grid, and the sequence stays 1-D
FLUX2 = Family(
    "Flux2",
    model_classes=("Flux2Transformer2DModel",),
    # Klein: the same noise, latents= and schedule; its output_type="latent" is the decoder's input (unpack reads it)
    pipeline_classes=("Flux2Pipeline", "Flux2KleinPipeline"),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    # the grid is the unpatchified (B, C, h, w) one, still normalized per 2×2 phase: a resize moves latent pixels, not
    # the four phases apart; the noise is drawn (B, 4C, h/2, w/2), as the pipeline draws it
    latents=Latents(video=False, vae_factor=image_vae, packing=2, to_grid=unpack, from_grid=patchify,
                    noise_grid=_noise, default_size=sample_size_default),  # fmt: skip
    # encode_prompt → (prompt_embeds, text_ids); guidance is embedded (Flux2) or Klein's CFG on a "" it encodes itself
    prompt=PromptEncoding(("prompt_embeds", None)),
    # a stage below full strength with shift=None gets its scheduler config's shift (FLUX.1's rule), not the μ(tokens,
    # steps) Flux.2 computes itself: give such stages an explicit shift
    flow_matching=True,
    stock_steps=50,
)

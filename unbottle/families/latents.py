"""Shared latent seams: a pipeline's patch and VAE factors, and the stock ways its latents and noise are shaped."""

from __future__ import annotations

import inspect

import torch


def call_default(pipe: object, name: str) -> object:
    """The default of `name` in the pipeline class's `__call__`, or None (no such parameter, or required)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def patch_size(pipe: object) -> tuple[int, int, int]:
    """(time, height, width) patch of the pipeline's transformer."""
    config = pipe.transformer.config
    if "patch_size" not in config and "all_patch_size" in config:  # Z-Image: its first patch sizes, the forward's
        return int(config.all_f_patch_size[0]), int(config.all_patch_size[0]), int(config.all_patch_size[0])
    p = config.patch_size
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p) if len(p) == 3 else (1, int(p[0]), int(p[1]))  # (ph, pw): HunyuanImage
    return int(getattr(config, "patch_size_t", 1) or 1), int(p), int(p)


def latent_frames(pipe: object, frames: int) -> int:
    """Latent frames of a `frames`-frame video (causal video VAEs: 1 + (frames − 1) / temporal factor)."""
    temporal = getattr(pipe, "vae_scale_factor_temporal", None) or pipe.vae_temporal_compression_ratio
    return (frames - 1) // temporal + 1


def image_vae(pipe: object) -> int:
    """Pixels per latent position of an image pipeline."""
    return int(pipe.vae_scale_factor)


def video_vae(pipe: object) -> int:
    """Pixels per latent position (spatial) of a video pipeline."""
    return int(getattr(pipe, "vae_scale_factor_spatial", None) or pipe.vae_spatial_compression_ratio)


def unpacked(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    """Pipeline latents that already are the grid (B, C, H, W) or (B, C, F, H, W)."""
    return latents


def same(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    """A grid the pipeline takes as it is."""
    return grid


def image_noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(C, h, w) of one image sample's noise: the denoiser's input channels at the VAE's latent size."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    f = pipe.vae_scale_factor
    return denoiser.config.in_channels, height // f, width // f


def video_noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(C, F', h, w) of one video sample's noise, F' the causal VAE's latent frames."""
    s = video_vae(pipe)
    return pipe.transformer.config.in_channels, latent_frames(pipe, frames), height // s, width // s


def rounded_video_noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    """(C, F', h, w) of one sample's noise for Wan-style text-to-video pipelines: the transformer's input channels,
    with the pipeline's own rounding of num_frames to k·temporal + 1."""
    temporal = pipe.vae_scale_factor_temporal
    if frames % temporal != 1:
        frames = frames // temporal * temporal + 1
    frames = max(frames, 1)
    s = video_vae(pipe)
    return pipe.transformer.config.in_channels, (frames - 1) // temporal + 1, height // s, width // s


def sample_size_default(pipe: object) -> tuple[int, int]:
    """(height, width) = the pipeline's `default_sample_size` × VAE factor (SDXL, SD3, Flux)."""
    side = pipe.default_sample_size * pipe.vae_scale_factor
    return side, side


def config_size_default(pipe: object) -> tuple[int, int]:
    """(height, width) = the denoiser config's `sample_size` × VAE factor (SD 1.x/2.x UNet, PixArt)."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    size = denoiser.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor


def signature_size_default(pipe: object) -> tuple[int, int]:
    """(height, width) = the defaults of the pipeline's own `__call__` (Wan: 480 × 832)."""
    return call_default(pipe, "height"), call_default(pipe, "width")

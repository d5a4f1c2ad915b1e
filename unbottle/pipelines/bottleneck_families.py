"""Per-family seams for Bottleneck Sampling (Tian et al., 2025): prompt encoding, latent layout, size granularity.

A family knows how its pipeline's `encode_prompt` answers (which `__call__` keyword each returned tensor feeds), how
its latents look in the pipeline's own format (packed tokens for Flux and LTX, a grid for the others) and which
pixel sizes keep every stage's latent divisible by the VAE factor × the patch size. It holds no sampling logic.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _grid(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    return latents  # the pipeline's latents already are (B, C, H, W) or (B, C, F, H, W)


def _same(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    return grid


def _flux_unpack(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int | None) -> torch.Tensor:
    # (B, h/2 · w/2, 4C) → (B, C, h, w)
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def _flux_pack(pipe: object, grid: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) → (B, h/2 · w/2, 4C)
    return pipe._pack_latents(grid, *grid.shape)


def latent_frames(pipe: object, frames: int) -> int:
    """Latent frames of a `frames`-frame video (causal video VAEs: 1 + (frames − 1) / temporal factor)."""
    temporal = getattr(pipe, "vae_scale_factor_temporal", None) or pipe.vae_temporal_compression_ratio
    return (frames - 1) // temporal + 1


def _ltx_unpack(pipe: object, latents: torch.Tensor, height: int, width: int, frames: int) -> torch.Tensor:
    # (B, F·h·w / patches, C·patches) → (B, C, F, h, w)
    r = pipe.vae_spatial_compression_ratio
    return pipe._unpack_latents(
        latents, latent_frames(pipe, frames), height // r, width // r, pipe.transformer_spatial_patch_size,
        pipe.transformer_temporal_patch_size,
    )  # fmt: skip


def _ltx_pack(pipe: object, grid: torch.Tensor) -> torch.Tensor:  # (B, C, F, h, w) → (B, F·h·w / patches, C·patches)
    return pipe._pack_latents(grid, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)


def _patch(pipe: object) -> tuple[int, int, int]:
    """(time, height, width) patch of the pipeline's transformer."""
    config = pipe.transformer.config
    p = config.patch_size
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p)
    return int(getattr(config, "patch_size_t", 1) or 1), int(p), int(p)


def _image_vae(pipe: object) -> int:
    return int(pipe.vae_scale_factor)


def _video_vae(pipe: object) -> int:
    return int(getattr(pipe, "vae_scale_factor_spatial", None) or pipe.vae_spatial_compression_ratio)


@dataclass(frozen=True)
class Family:
    """How one pipeline family is driven through its seams (`prompt_embeds=`, `latents=`, `output_type="latent"`)."""

    name: str
    pipeline_classes: tuple[str, ...]
    encoded: tuple[str | None, ...]  # the `__call__` keyword of each tensor `encode_prompt` returns (None: unused)
    separate_negative: bool  # negatives come from a second `encode_prompt` call (true CFG: Flux, HunyuanVideo)
    video: bool
    vae_factor: Callable[[object], int]  # pixels per latent position
    packing: int  # latent positions per side folded into one token by the pipeline itself (Flux: 2)
    size_multiple: int  # what the pipeline's own `check_inputs` demands of height/width (1: nothing beyond the VAE)
    to_grid: Callable[..., torch.Tensor] = _grid  # pipeline latents → (B, C, [F,] h, w)
    from_grid: Callable[[object, torch.Tensor], torch.Tensor] = _same  # (B, C, [F,] h, w) → pipeline latents

    def multiple(self, pipe: object) -> int:
        """Granularity of a stage's height/width in pixels: VAE factor × patch size (× packing), as the pipe needs."""
        _, ph, pw = _patch(pipe)
        return math.lcm(self.vae_factor(pipe) * self.packing * math.lcm(ph, pw), self.size_multiple)

    def latent_size(self, pipe: object, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_factor(pipe), width // self.vae_factor(pipe)

    def tokens(self, pipe: object, grid_shape: tuple[int, ...]) -> int:
        """Transformer tokens of a latent grid (B, C, [F,] h, w): what dynamic shifting's μ is computed from."""
        pt, ph, pw = _patch(pipe)
        *frames, h, w = grid_shape[2:]
        f = frames[0] // pt if frames else 1
        return f * (h // (ph * self.packing)) * (w // (pw * self.packing))

    def encode(self, pipe: object, kwargs: dict, guidance_default: float | None) -> dict:
        """Encode the prompt once with the pipeline's own `encode_prompt`; the `__call__` keywords that carry it."""
        params = inspect.signature(pipe.encode_prompt).parameters
        shared = {"device": pipe._execution_device}
        if "do_classifier_free_guidance" in params:  # SD3, Wan, LTX: CFG when guidance_scale > 1, as in the pipeline
            shared["do_classifier_free_guidance"] = kwargs.get("guidance_scale", guidance_default) > 1
        if "lora_scale" in params:
            attention_kwargs = kwargs.get("joint_attention_kwargs") or kwargs.get("attention_kwargs") or {}
            shared["lora_scale"] = attention_kwargs.get("scale")
        call_params = inspect.signature(type(pipe).__call__).parameters
        for name in ("max_sequence_length", "prompt_template", "clip_skip"):
            if name in params and name in kwargs:
                shared[name] = kwargs[name]
            elif name in params and name in call_params and call_params[name].default is not inspect.Parameter.empty:
                # the `__call__` default, which may differ from `encode_prompt`'s (Wan: 512 vs 226 text tokens)
                shared[name] = call_params[name].default
        batch = {k: v for k, v in kwargs.items() if k in ("num_images_per_prompt", "num_videos_per_prompt")}
        shared.update({k: v for k, v in batch.items() if k in params})
        own = {k: v for k, v in kwargs.items() if k in params and k not in shared}
        # required but not given (SD3's prompt_2/prompt_3): None, as the stock `__call__` passes its own defaults
        own.update({k: None for k, p in params.items() if p.default is p.empty and k not in own and k not in shared})
        out = dict(zip(self.encoded, pipe.encode_prompt(**own, **shared), strict=True))
        if self.separate_negative and self._true_cfg(pipe, kwargs):
            negative = {k.removeprefix("negative_"): v for k, v in kwargs.items() if k.startswith("negative_")}
            negative = {k: v for k, v in negative.items() if k in params and k not in shared}
            negative.update({k: None for k, p in params.items() if p.default is p.empty and k not in negative})
            encoded = pipe.encode_prompt(**negative, **shared)
            out.update({f"negative_{k}": v for k, v in zip(self.encoded, encoded, strict=True)})
        out.pop(None, None)
        out.pop("negative_None", None)
        return out

    @staticmethod
    def _true_cfg(pipe: object, kwargs: dict) -> bool:
        default = inspect.signature(type(pipe).__call__).parameters["true_cfg_scale"].default
        scale = kwargs.get("true_cfg_scale", default)
        has_negative = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
        return scale > 1 and has_negative

    def consumed(self, pipe: object) -> set[str]:
        """`__call__` keywords the encoding replaces (prompts, their embeddings, per-prompt batch counts)."""
        params = set(inspect.signature(pipe.encode_prompt).parameters)
        keep = {"device", "dtype", "do_classifier_free_guidance", "lora_scale", "max_sequence_length", "clip_skip"}
        keep.add("prompt_template")
        names = params - keep
        return names | {f"negative_{n}" for n in names} | {"num_images_per_prompt", "num_videos_per_prompt"}


FAMILIES: tuple[Family, ...] = (
    Family(
        "Flux", ("FluxPipeline",), ("prompt_embeds", "pooled_prompt_embeds", None), separate_negative=True,
        video=False, vae_factor=_image_vae, packing=2, size_multiple=1, to_grid=_flux_unpack, from_grid=_flux_pack,
    ),
    Family(
        "SD3", ("StableDiffusion3Pipeline",),
        ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
        separate_negative=False, video=False, vae_factor=_image_vae, packing=1, size_multiple=1,
    ),
    Family(
        "Wan", ("WanPipeline",), ("prompt_embeds", "negative_prompt_embeds"), separate_negative=False, video=True,
        vae_factor=_video_vae, packing=1, size_multiple=16,
    ),
    Family(
        "HunyuanVideo", ("HunyuanVideoPipeline",), ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"),
        separate_negative=True, video=True, vae_factor=_video_vae, packing=1, size_multiple=16,
    ),
    Family(
        "LTX-Video", ("LTXPipeline",),
        ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"),
        separate_negative=False, video=True, vae_factor=_video_vae, packing=1, size_multiple=32, to_grid=_ltx_unpack,
        from_grid=_ltx_pack,
    ),
)  # fmt: skip


def supported_families() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.pipeline_classes)})" for f in FAMILIES)


def family_of(pipe: object) -> Family:
    """The family of a pipeline's class (or a base class), else a ValueError listing the supported families."""
    names = {cls.__name__ for cls in type(pipe).__mro__}
    for family in FAMILIES:
        if names.intersection(family.pipeline_classes):
            return family
    raise ValueError(
        f"unbottle.BottleneckSampler does not support {type(pipe).__name__}; supported pipelines: "
        f"{supported_families()}"
    )

"""Per-family seams for reward-guided noise optimization (ReNO, CARINOX): the initial noise and the cached prompt.

A family knows, for its stock pipeline, what the `latents=` argument is (the shape of one sample's noise as the
pipeline's own `prepare_latents` draws it, the dtype it is drawn in, and Flux's 2×2 token packing), the height and
width the pipeline falls back to, and which `__call__` keyword each tensor of `encode_prompt` feeds. With these, the
noise of seed s is drawn exactly as `pipe(prompt, generator=torch.Generator().manual_seed(s))` draws it, and the
generator is handed on in the state the pipeline leaves it in (ancestral / DDPM steps draw from it too). It holds no
sampling logic: generation always runs the pipeline's own `__call__`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

# the pipelines' own keywords for the number of samples per prompt
PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")
_TEXT = re.compile(r"(negative_)?prompt(_\d+)?")


def _call_default(pipe: object, name: str) -> object:
    parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _sample_size_default(pipe: object) -> tuple[int, int]:  # SDXL, Flux, SD3: default_sample_size × VAE factor
    side = pipe.default_sample_size * pipe.vae_scale_factor
    return side, side


def _config_size_default(pipe: object) -> tuple[int, int]:  # SD 1.x/2.x (UNet), PixArt (transformer) sample_size
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    size = denoiser.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor


def _signature_size_default(pipe: object) -> tuple[int, int]:  # Wan: __call__'s own defaults (480 × 832)
    return _call_default(pipe, "height"), _call_default(pipe, "width")


def _image_grid(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w): SD, SDXL, PixArt, SD3
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    f = pipe.vae_scale_factor
    return denoiser.config.in_channels, height // f, width // f


def _flux_grid(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w) before packing: latent sides rounded down to even, C = transformer channels / (2 × 2)
    f = pipe.vae_scale_factor
    return pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2))


def _flux_pack(pipe: object, grid: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) → (B, h/2 · w/2, 4C)
    return pipe._pack_latents(grid, *grid.shape)


def _video_grid(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, F', h, w): Wan, causal video VAE (F' = 1 + (frames − 1) / temporal factor)
    s, t = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    return pipe.transformer.config.in_channels, (frames - 1) // t + 1, height // s, width // s


def _same(pipe: object, grid: torch.Tensor) -> torch.Tensor:
    return grid


def _pixart_bins(pipe: object) -> dict | None:
    """PixArt's aspect-ratio bins for its transformer's sample size (the pipeline's own tables), or None."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

    bins = {256: ASPECT_RATIO_2048_BIN, 128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}
    return bins.get(pipe.transformer.config.sample_size)


@dataclass(frozen=True)
class NoiseFamily:
    """How one pipeline family's initial noise and prompt encoding look through its seams (`latents=`, embeds)."""

    name: str
    pipeline_classes: tuple[str, ...]
    encoded: tuple[str | None, ...]  # the `__call__` keyword of each tensor `encode_prompt` returns (None: unused)
    grid: Callable[[object, int, int, int | None], tuple[int, ...]]  # one sample's noise shape, as drawn
    default_size: Callable[[object], tuple[int, int]]  # (height, width) when the call gives none
    pack: Callable[[object, torch.Tensor], torch.Tensor] = _same  # drawn grid → the pipeline's `latents=` format
    float32_noise: bool = False  # drawn in float32 whatever the weights (Wan); else in the prompt embeddings' dtype
    separate_negative: bool = False  # negatives from a second `encode_prompt` call (Flux true CFG)
    video: bool = False
    resolution_binning: bool = False  # PixArt: `use_resolution_binning` maps the size to its aspect-ratio bin

    def size(self, pipe: object, kwargs: dict) -> tuple[int, int]:
        """(height, width) the pipeline generates at for these call arguments, before any output resize (ReNO)."""
        default_h, default_w = self.default_size(pipe)
        height, width = kwargs.get("height") or default_h, kwargs.get("width") or default_w
        binning = kwargs.get("use_resolution_binning", _call_default(pipe, "use_resolution_binning"))
        if self.resolution_binning and binning:
            bins = _pixart_bins(pipe)
            if bins is not None:  # else the pipeline raises its own error for the sample size
                height, width = pipe.image_processor.classify_height_width_bin(height, width, ratios=bins)
        return int(height), int(width)

    def noise_shape(self, pipe: object, kwargs: dict) -> tuple[int, ...]:
        """(1, C, [F',] h, w): one sample's noise shape as the pipeline draws it, before packing (ReNO, CARINOX)."""
        frames = (kwargs.get("num_frames") or _call_default(pipe, "num_frames")) if self.video else None
        return (1, *self.grid(pipe, *self.size(pipe, kwargs), frames))

    def noise_dtype(self, embeds: dict) -> torch.dtype:
        """The dtype the pipeline draws (and keeps) its latents in; the search casts its float32 ε to it (ReNO)."""
        return torch.float32 if self.float32_noise else embeds["prompt_embeds"].dtype

    def draw(self, pipe: object, kwargs: dict, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise in the `latents=` format, the CPU generator's state after the draw) for seed `seed` (CARINOX)."""
        generator = torch.Generator().manual_seed(seed)
        grid = randn_tensor(self.noise_shape(pipe, kwargs), generator=generator, device=pipe._execution_device,
                            dtype=dtype)  # fmt: skip
        return self.pack(pipe, grid), generator.get_state()


FAMILIES: tuple[NoiseFamily, ...] = (
    NoiseFamily("StableDiffusion", ("StableDiffusionPipeline",), ("prompt_embeds", "negative_prompt_embeds"),
                _image_grid, _config_size_default),
    NoiseFamily("SDXL", ("StableDiffusionXLPipeline",),
                ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
                _image_grid, _sample_size_default),
    NoiseFamily("PixArt", ("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
                ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"),
                _image_grid, _config_size_default, resolution_binning=True),
    NoiseFamily("SD3", ("StableDiffusion3Pipeline",),
                ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
                _image_grid, _sample_size_default),
    NoiseFamily("Flux", ("FluxPipeline",), ("prompt_embeds", "pooled_prompt_embeds", None), _flux_grid,
                _sample_size_default, pack=_flux_pack, separate_negative=True),
    NoiseFamily("Wan", ("WanPipeline",), ("prompt_embeds", "negative_prompt_embeds"), _video_grid,
                _signature_size_default, float32_noise=True, video=True),
)  # fmt: skip


def supported_families() -> str:
    """The families whose noise can be optimized (CARINOX / ReNO), with their pipeline classes, for messages."""
    return ", ".join(f"{f.name} ({'/'.join(f.pipeline_classes)})" for f in FAMILIES)


def noise_family(pipe: object) -> NoiseFamily | None:
    """The noise family (ReNO / CARINOX optimization) of a pipeline's class or a base class; None if it has none."""
    names = {cls.__name__ for cls in type(pipe).__mro__}
    return next((f for f in FAMILIES if names.intersection(f.pipeline_classes)), None)


def text_keys(pipe: object) -> set[str]:
    """`__call__` keywords carrying prompt text (prompt, prompt_2, negative_…): replaced by cached embeds (CARINOX)."""
    return {k for k in inspect.signature(type(pipe).__call__).parameters if _TEXT.fullmatch(k)}


def _encode_arguments(pipe: object, kwargs: dict) -> dict:
    """`encode_prompt` arguments as the stock `__call__` passes them: the caller's, else `__call__`'s defaults."""
    # the class's own signature: an instance-level wrapper (structured guidance) may only show (*args, **kwargs)
    params = dict(inspect.signature(type(pipe).encode_prompt).parameters)
    params.pop("self", None)
    call = inspect.signature(type(pipe).__call__).parameters
    args: dict = {}
    for name, parameter in params.items():
        if name in kwargs:
            args[name] = kwargs[name]
        elif name in call and call[name].default is not inspect.Parameter.empty:
            args[name] = call[name].default  # may differ from encode_prompt's (Wan: 512 vs 226 text tokens)
        elif parameter.default is inspect.Parameter.empty and name not in ("device", "do_classifier_free_guidance"):
            args[name] = None  # required but not given (SD3's prompt_2/prompt_3): the stock `__call__` passes None
    if "device" in params:
        args["device"] = pipe._execution_device
    if "do_classifier_free_guidance" in params:  # always encode the negative: unused when the call runs no CFG
        args["do_classifier_free_guidance"] = True
    if "lora_scale" in params:
        attention = (kwargs.get("cross_attention_kwargs") or kwargs.get("joint_attention_kwargs")
                     or kwargs.get("attention_kwargs") or {})  # fmt: skip
        args["lora_scale"] = attention.get("scale")
    return args


@torch.no_grad()
def encode(pipe: object, family: NoiseFamily, kwargs: dict) -> dict[str, torch.Tensor]:
    """The prompt encoded once by the pipeline's own `encode_prompt` (cached, CARINOX): `__call__` keyword → tensor."""
    args = _encode_arguments(pipe, kwargs)
    out = dict(zip(family.encoded, pipe.encode_prompt(**args), strict=True))
    if family.separate_negative and kwargs.get("negative_prompt") is not None:  # Flux true CFG: a second encoding
        negative = dict(args, prompt=kwargs["negative_prompt"], prompt_embeds=None, pooled_prompt_embeds=None)
        if "prompt_2" in args:
            negative["prompt_2"] = kwargs.get("negative_prompt_2")
        encoded = pipe.encode_prompt(**negative)
        out.update({f"negative_{k}": v for k, v in zip(family.encoded, encoded, strict=True) if k is not None})
    out.pop(None, None)
    return {k: v for k, v in out.items() if v is not None}

"""Z-Image (ZImageTransformer2DModel): joint attention, image patches first, caption last (each padded to a multiple
of 32 tokens); the image-only noise refiner too (the caption-only context refiner stays dense). ZImagePipeline draws
(B, C, h, w) float32 latents and hands the transformer one (C, 1, h, w) tensor per sample, with t = 1 − σ."""

from __future__ import annotations

import torch

from .family import Family, Latents, PromptEncoding, SelfAttention
from .latents import image_vae
from .layout import TokenLayout
from .parallel import z_image_plan

_MULTIPLE = 32  # the model pads the image and the caption tokens each to a multiple of this


def _padded(n: int) -> int:
    return n + (-n) % _MULTIPLE


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    x, captions = bound["x"], bound["cap_feats"]
    if not isinstance(x[0], torch.Tensor):  # omni mode: [caption, condition images, image, SigLIP]: 1-D
        return TokenLayout()
    p, pf = int(bound.get("patch_size", 2)), int(bound.get("f_patch_size", 1))
    shapes = {tuple(xi.shape[1:]) for xi in x}  # (F, H, W) per sample
    lengths = {_padded(len(c)) for c in captions}
    if len(shapes) != 1 or len(lengths) != 1:  # samples of different sizes: padded to the longest, 1-D
        return TokenLayout()
    f, h, w = shapes.pop()
    grid = (f // pf, h // p, w // p)
    if grid[0] * grid[1] * grid[2] % _MULTIPLE:  # image padding between image and caption: no grid explains it
        return TokenLayout()
    return TokenLayout(grid, lengths.pop(), text_first=False)


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w) in float32: latent sides rounded down to even, as the pipeline's prepare_latents
    f = pipe.vae_scale_factor
    return pipe.transformer.config.in_channels, 2 * (height // (f * 2)), 2 * (width // (f * 2))


def _default_size(pipe: object) -> tuple[int, int]:
    """(1024, 1024): the pipeline's `height or 1024`, `width or 1024`."""
    return 1024, 1024


Z_IMAGE = Family(
    "ZImage",
    model_classes=("ZImageTransformer2DModel",),
    pipeline_classes=("ZImagePipeline",),
    attention=SelfAttention(r"^(layers|noise_refiner)\.\d+\.attention$", _layout, timestep_arg="t",
                             timestep_rising=True),  # the pipeline passes t = 1 − σ
    latents=Latents(video=False, vae_factor=image_vae, noise_grid=_noise, default_size=_default_size,
                    float32_noise=True),  # fmt: skip
    # encode_prompt → (per-sample caption embeddings, their negatives: [] without CFG); the pipeline runs CFG at
    # guidance_scale > 0 but a shared encoding holds negatives only above 1, so bottleneck sampling needs 0 or > 1
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds")),
    flow_matching=True,
    stock_steps=50,
    parallel_plan=z_image_plan,  # diffusers gives this class none
)

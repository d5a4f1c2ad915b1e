"""Bria (BriaTransformer2DModel, BriaPipeline): FLUX.1's blocks, joint text-image attention, text first, grid from
`img_ids`; 2×2-packed latent tokens, whose `vae_scale_factor` counts the packing (16 for the VAE's 8)."""

from __future__ import annotations

from .family import Family, Latents, PromptEncoding, SelfAttention
from .flux import _layout, pack, unpack
from .latents import sample_size_default
from .parallel import joint_ids_plan


def _vae(pipe: object) -> int:
    """Pixels per latent position: the pipeline's `vae_scale_factor` (2^blocks) is twice the VAE's (2^(blocks − 1))."""
    return int(pipe.vae_scale_factor) // 2


def _noise(pipe: object, height: int, width: int, frames: int | None) -> tuple[int, ...]:
    # (C, h, w) before packing, as `prepare_latents` draws it: latent sides 2 · (side // vae_scale_factor), even
    f = pipe.vae_scale_factor
    return pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f)


BRIA = Family(
    "Bria",
    model_classes=("BriaTransformer2DModel",),
    pipeline_classes=("BriaPipeline",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    # FLUX.1's `_pack_latents`/`_unpack_latents` signatures (its unpack divides by the doubled vae_scale_factor)
    latents=Latents(video=False, vae_factor=_vae, packing=2, to_grid=unpack, from_grid=pack, noise_grid=_noise,
                    default_size=sample_size_default),  # fmt: skip
    # encode_prompt → (prompt_embeds, negative_prompt_embeds, text_ids): plain CFG (guidance_scale > 1), a missing
    # negative being zeros; the pipeline takes no `sigmas=`, so bottleneck stages run their grid through the scheduler
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds", None)),
    flow_matching=True,
    stock_steps=30,
    parallel_plan=joint_ids_plan,  # FLUX.1's plan fits: diffusers gives this class none
)

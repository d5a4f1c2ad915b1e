"""Ovis-Image (OvisImageTransformer2DModel, OvisImagePipeline): FLUX.1-style joint text-image attention, text first,
grid from `img_ids`; 2×2-packed latent tokens, as FLUX.1."""

from __future__ import annotations

from .family import Family, Latents, PromptEncoding, SelfAttention
from .flux import _layout, _noise, pack, unpack
from .latents import image_vae, sample_size_default
from .parallel import joint_ids_plan

OVIS_IMAGE = Family(
    "OvisImage",
    model_classes=("OvisImageTransformer2DModel",),
    pipeline_classes=("OvisImagePipeline",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    # FLUX.1's latents: the pipeline's own `_pack_latents`/`_unpack_latents`, its noise drawn (B, C, h, w) then packed
    latents=Latents(video=False, vae_factor=image_vae, packing=2, to_grid=unpack, from_grid=pack, noise_grid=_noise,
                    default_size=sample_size_default),  # fmt: skip
    # encode_prompt → (prompt_embeds, negative_prompt_embeds, text_ids, negative_text_ids): plain CFG (guidance_scale
    # > 1) with the negative (default "") from the same call
    prompt=PromptEncoding(("prompt_embeds", "negative_prompt_embeds", None, None)),
    flow_matching=True,
    stock_steps=50,
    parallel_plan=joint_ids_plan,  # FLUX.1's plan fits: diffusers gives this class none
)

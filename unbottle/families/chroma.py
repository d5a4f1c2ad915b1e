"""Chroma (ChromaTransformer2DModel, ChromaPipeline): FLUX.1's blocks, joint text-image attention, text first, grid
from `img_ids`; 2×2-packed latent tokens, as FLUX.1."""

from __future__ import annotations

from .family import Family, Latents, PromptEncoding, SelfAttention
from .flux import _layout, _noise, pack, unpack
from .latents import image_vae, sample_size_default
from .parallel import SQUARE_MASK_REFUSAL

CHROMA = Family(
    "Chroma",
    model_classes=("ChromaTransformer2DModel",),
    pipeline_classes=("ChromaPipeline",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    # FLUX.1's latents: the pipeline's own `_pack_latents`/`_unpack_latents`, its noise drawn (B, C, h, w) then packed
    latents=Latents(video=False, vae_factor=image_vae, packing=2, to_grid=unpack, from_grid=pack, noise_grid=_noise,
                    default_size=sample_size_default),  # fmt: skip
    # encode_prompt → (prompt_embeds, text_ids, prompt_attention_mask, negative_prompt_embeds, negative_text_ids,
    # negative_prompt_attention_mask): plain CFG (guidance_scale > 1) with the negative from the same call
    prompt=PromptEncoding(("prompt_embeds", None, "prompt_attention_mask", "negative_prompt_embeds", None,
                           "negative_prompt_attention_mask")),  # fmt: skip
    flow_matching=True,
    stock_steps=35,
    parallel_refusal=SQUARE_MASK_REFUSAL,
)

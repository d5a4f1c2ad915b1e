"""Tiny offline text-to-image pipelines: UNet SD and SDXL, SD3, Flux and PixArt-Sigma, in stock diffusers classes.

Configs follow diffusers' own pipeline test recipes, with text encoders built from configs and the offline tokenizers
of `unbottle.testing.tokenizers`; each attention layer keeps ≥ 2 heads so per-head methods have something to do.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer


def _clip_config(hidden_size: int, projection_dim: int = 32) -> CLIPTextConfig:
    # bos/eos/pad ids match tiny_clip_tokenizer (<|startoftext|>=0, <|endoftext|>=1)
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, hidden_act="gelu",
        projection_dim=projection_dim,
    )  # fmt: skip


def _t5(d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=256, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4))


def _flat_vae(latent_channels: int) -> AutoencoderKL:
    # one block: vae_scale_factor 1, so latents are as large as the image (keeps token counts up at tiny sizes)
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip


def _sd_vae() -> AutoencoderKL:
    # two blocks: vae_scale_factor 2
    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip


def tiny_stable_diffusion_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> StableDiffusionPipeline:
    """Tiny UNet Stable Diffusion (1.x/2.x layout), DDIM; height/width multiples of 8 (e.g. 32), default 64."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    torch.manual_seed(seed)
    vae = _sd_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(hidden_size=16))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)


def tiny_sdxl_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> StableDiffusionXLPipeline:
    """Tiny SDXL (two CLIP encoders, text-time conditioning), Euler; height/width multiples of 8, default 64."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop ids × 8 + pooled text (projection_dim)
        cross_attention_dim=32 + 32, norm_num_groups=4,
    )  # fmt: skip
    torch.manual_seed(seed)
    vae = _sd_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(hidden_size=32))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(hidden_size=32, projection_dim=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False,
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)


def tiny_sd3_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> StableDiffusion3Pipeline:
    """Tiny SD3 (MMDiT joint attention, 2 CLIP + T5), flow matching; any height/width ≥ 8, default 32."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_clip_config(hidden_size=16, projection_dim=32))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(hidden_size=16, projection_dim=32))
    torch.manual_seed(seed)
    text_encoder_3 = _t5(d_model=32)  # CLIP hidden 16 + 16 = T5 width 32 = joint_attention_dim
    torch.manual_seed(seed)
    vae = _flat_vae(latent_channels=4)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=tiny_t5_tokenizer(256),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)


def tiny_flux_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> FluxPipeline:
    """Tiny FLUX.1 (double + single stream blocks, RoPE), flow matching; height/width multiples of 2, default 32."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(hidden_size=32, projection_dim=32))
    torch.manual_seed(seed)
    text_encoder_2 = _t5(d_model=32)
    torch.manual_seed(seed)
    vae = _flat_vae(latent_channels=1)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2, tokenizer_2=tiny_t5_tokenizer(512),
        transformer=transformer,
    )  # fmt: skip
    pipe.default_sample_size = 32  # the stock default (128 × vae_scale_factor) is for real Flux
    return finish_pipeline(pipe, device, dtype)


def tiny_pixart_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> PixArtSigmaPipeline:
    """Tiny PixArt-Sigma (self- + cross-attention DiT, T5), DDIM; call with use_resolution_binning=False, sizes % 4."""
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = _t5(d_model=32)
    torch.manual_seed(seed)
    vae = _sd_vae()
    pipe = PixArtSigmaPipeline(
        tokenizer=tiny_t5_tokenizer(300), text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=DDIMScheduler(),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)

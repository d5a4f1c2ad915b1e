"""Tiny offline Wan image-to-video pipelines (stock WanImageToVideoPipeline): Wan 2.1 I2V and Wan 2.2 TI2V style.

Configs follow diffusers' own recipe (tests/pipelines/wan/test_wan_image_to_video.py), with the text encoder, the CLIP
vision encoder and its image processor built from configs, and the offline T5-style tokenizer. The Wan 2.1 I2V
transformer keeps the real layout: 36 input channels (16 noise + 4 mask + 16 condition), an image embedder and added
key/value projections in cross-attention. Its attention splits off the text as the last 512 tokens (diffusers
hardcodes Wan's text length), so calls keep the pipeline's default `max_sequence_length=512`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_t5_tokenizer

IMAGE_DIM = 8  # the CLIP vision encoder's hidden size: the image embeddings the transformer takes
_HEADS, _HEAD_DIM = 2, 12


def _parts(seed: int, in_channels: int, image_dim: int | None) -> dict:
    """Tokenizer, UMT5 text encoder, VAE (z_dim 16, ×8 / ×4) and transformer, each seeded."""
    tokenizer = tiny_t5_tokenizer(512)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM, in_channels=in_channels,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_dim,
        added_kv_proj_dim=_HEADS * _HEAD_DIM if image_dim else None,  # image tokens' own keys/values, as in Wan 2.1
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    # z_dim must stay 16: the pipeline normalises latents with the 16-entry default latents_mean/std
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
        )
    )  # fmt: skip
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))  # fmt: skip


def tiny_wan_i2v_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> WanImageToVideoPipeline:
    """Tiny Wan 2.1 image-to-video (CLIP vision encoder, 36-channel input); sizes multiples of 16, frames 4k+1."""
    # 32×32×9 video → latents (1, 16, 3, 4, 4) → 3 × 2 × 2 tokens (1×2×2 patches); the image gives 17 CLIP tokens
    parts = _parts(seed, in_channels=36, image_dim=IMAGE_DIM)
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8)  # fmt: skip
    )
    image_processor = CLIPImageProcessor(size=32, crop_size=32)
    pipe = WanImageToVideoPipeline(**parts, image_encoder=image_encoder, image_processor=image_processor)
    return finish_pipeline(pipe, device, dtype)


def tiny_wan_ti2v_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> WanImageToVideoPipeline:
    """Tiny Wan 2.2 TI2V-style image-to-video (`expand_timesteps`: the first latent frame is the clean image, the
    timestep per token); no image encoder, 16-channel input; sizes multiples of 16, frames 4k+1."""
    pipe = WanImageToVideoPipeline(**_parts(seed, in_channels=16, image_dim=None), expand_timesteps=True)
    return finish_pipeline(pipe, device, dtype)

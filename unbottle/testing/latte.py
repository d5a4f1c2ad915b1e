"""Tiny offline Latte text-to-video pipeline (LattePipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/latte): a DiT of 2 spatial + 2 temporal
blocks, the spatial ones with self-attention over one frame's (h, w) patch grid and cross-attention to T5 token
states (through its caption projection), a 2-D VAE (×2) applied per frame, and DDIM.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, LattePipeline, LatteTransformer3DModel
from transformers import T5Config, T5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_t5_tokenizer


def tiny_latte_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LattePipeline:
    """Tiny Latte (spatial self + cross attention, temporal self-attention, T5), DDIM; height/width multiples of 4."""
    tokenizer = tiny_t5_tokenizer(512)  # a T5 tokenizer allows 512 tokens; the pipeline keeps at most 120
    torch.manual_seed(seed)
    transformer = LatteTransformer3DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=2,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
        )
    )  # fmt: skip
    pipe = LattePipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=DDIMScheduler()
    )
    return finish_pipeline(pipe, device, dtype)

"""Tiny offline AuraFlow text-to-image pipeline (AuraFlowPipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/aura_flow): an MMDiT with one joint and one
single-stream block, register tokens before the text, a UMT5 encoder built from a config, a ×4 KL VAE and the stock
flow-matching scheduler (static shift).
"""

from __future__ import annotations

import torch
from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import UMT5Config, UMT5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_t5_tokenizer


def tiny_auraflow_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> AuraFlowPipeline:
    """Tiny AuraFlow (MMDiT joint attention, UMT5); height/width multiples of 8 up to 64 (call with a size)."""
    # 32×32 image → latents (1, 4, 8, 8) → 16 patch tokens after 8 register tokens and the text
    torch.manual_seed(seed)
    transformer = AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, out_channels=4,
        pos_embed_max_size=64,  # an 8 × 8 grid of learned positions: latents up to 16 × 16
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(  # three blocks: vae_scale_factor 4
        block_out_channels=[4, 8, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    )  # fmt: skip
    tokenizer = tiny_t5_tokenizer(256)
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=16, num_layers=2, num_heads=2)
    )
    pipe = AuraFlowPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)

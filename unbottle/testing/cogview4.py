"""Tiny offline CogView4 text-to-image pipeline (CogView4Pipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/cogview4): a 2-block DiT with joint
text-image attention (text first), a GLM text encoder built from a config whose second-to-last hidden states are the
text features, a ×4 KL VAE and CogView4's flow-matching schedule (linear dynamic shift from the image's token count,
computed by the pipeline itself). The word-level tokenizer prepends a prefix token and
pads on the left like GLM's.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
from transformers import GlmConfig, GlmModel

from ._common import finish_pipeline
from .tokenizers import word_level_tokenizer


def tiny_cogview4_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> CogView4Pipeline:
    """Tiny CogView4 (joint-attention DiT, GLM); height/width multiples of 16, default 32."""
    # 32×32 image → latents (1, 4, 8, 8) → 16 patch tokens after the text (padded on the left to a multiple of 16)
    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=8, condition_dim=4, rope_axes_dim=(4, 4),
        sample_size=8,  # the default size: 8 latent positions × 4 = 32 px (the real model's 128 is 1024 px)
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(  # three blocks: vae_scale_factor 4
        block_out_channels=[4, 8, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    )  # fmt: skip
    # GLM prepends its [gMASK] prefix to every text, so even the empty negative prompt is one token
    tokenizer = word_level_tokenizer(1024, pad="<|endoftext|>", eos=None, bos="[gMASK]")
    tokenizer.padding_side = "left"
    torch.manual_seed(seed + 2)
    text_encoder = GlmModel(
        GlmConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=8, pad_token_id=0,
        )
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(  # CogView4's scheduler_config
        base_image_seq_len=256, base_shift=0.25, max_shift=0.75, max_image_seq_len=4096, use_dynamic_shifting=True,
        time_shift_type="linear",
    )  # fmt: skip
    pipe = CogView4Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return finish_pipeline(pipe, device, dtype)

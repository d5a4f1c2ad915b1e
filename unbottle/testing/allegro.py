"""Tiny offline Allegro text-to-video pipeline (AllegroPipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/allegro): a 2-block DiT with self-attention
over the (F, h, w) patch grid and cross-attention to T5 token states (through its caption projection), the Allegro
VAE (×8 spatial, ×4 temporal; it decodes only tiled) and DDIM.
"""

from __future__ import annotations

import torch
from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler
from transformers import T5Config, T5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_t5_tokenizer


def tiny_allegro_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> AllegroPipeline:
    """Tiny Allegro (self + cross attention, T5), DDIM; height/width multiples of 16, e.g. 16×16 with 4 frames."""
    tokenizer = tiny_t5_tokenizer(512)
    torch.manual_seed(seed)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8, caption_channels=32,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLAllegro(
        in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )  # fmt: skip
    vae.enable_tiling()  # the Allegro VAE has no untiled decode
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
        )
    )  # fmt: skip
    pipe = AllegroPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=DDIMScheduler()
    )
    return finish_pipeline(pipe, device, dtype)

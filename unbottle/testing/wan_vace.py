"""Tiny offline Wan VACE pipeline (stock WanVACEPipeline): a Wan transformer with VACE control blocks, UMT5 text, the
Wan VAE and the flow-mode UniPC scheduler of the checkpoints (flow shift 3).

Configs follow diffusers' own recipe (tests/pipelines/wan/test_wan_vace.py). The control stream takes 96 channels as
the real model: the control video's inactive and reactive latents (16 + 16) and the mask folded to 8 × 8 = 64
channels; without a control video the pipeline conditions on an all-zero video under an all-ones mask.
"""

from __future__ import annotations

import torch
from diffusers import WanVACEPipeline, WanVACETransformer3DModel

from ._common import finish_pipeline
from ._wan_like import flow_unipc, text_and_vae


def tiny_wan_vace_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> WanVACEPipeline:
    """Tiny Wan VACE (2 blocks, each with a control block); height/width multiples of 16, frames 4k+1."""
    # 32×32×5 video → latents (1, 16, 2, 4, 4) → 2 × 2 × 2 tokens (1×2×2 patches), control tokens the same grid
    torch.manual_seed(seed)
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, vace_layers=[0, 1], vace_in_channels=96,
    )  # fmt: skip
    pipe = WanVACEPipeline(transformer=transformer, scheduler=flow_unipc(3.0), **text_and_vae(seed))
    return finish_pipeline(pipe, device, dtype)

"""Tiny offline SkyReels-V2 text-to-video pipeline (stock SkyReelsV2Pipeline): a Wan-shaped transformer with self and
cross attention to UMT5 text, the Wan VAE, and the flow-mode UniPC scheduler of the checkpoints (flow shift 8).

Configs follow diffusers' own recipe (tests/pipelines/skyreels_v2/test_skyreels_v2.py) with the text encoder built
from a config and the offline T5-style tokenizer.
"""

from __future__ import annotations

import torch
from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel

from ._common import finish_pipeline
from ._wan_like import flow_unipc, text_and_vae


def tiny_skyreels_v2_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> SkyReelsV2Pipeline:
    """Tiny SkyReels-V2 text-to-video (self + cross attention, UMT5); height/width multiples of 16, frames 4k+1."""
    # 32×32×5 video → latents (1, 16, 2, 4, 4) → 2 × 2 × 2 tokens (1×2×2 patches); RoPE covers ≤ 32 per axis
    torch.manual_seed(seed)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    pipe = SkyReelsV2Pipeline(transformer=transformer, scheduler=flow_unipc(8.0), **text_and_vae(seed))
    return finish_pipeline(pipe, device, dtype)

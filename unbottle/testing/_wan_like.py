"""Shared parts of the tiny Wan-derived fixtures (SkyReels-V2, Wan VACE, ChronoEdit): UMT5 text, the Wan VAE and the
flow-mode UniPC scheduler these checkpoints ship, each built from configs with seeded init."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from transformers import UMT5Config, UMT5EncoderModel

from .tokenizers import tiny_t5_tokenizer
from .video import _t5_config


def text_and_vae(seed: int) -> dict:
    """Tokenizer (512 tokens), UMT5 encoder (d_model 32) and Wan VAE (z_dim 16, ×8 spatial, ×4 temporal), seeded."""
    tokenizer = tiny_t5_tokenizer(512)
    torch.manual_seed(seed + 1)
    # z_dim must stay 16: the pipelines normalise latents with the 16-entry default latents_mean/std
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(_t5_config(UMT5Config, len(tokenizer)))
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)


def flow_unipc(flow_shift: float) -> UniPCMultistepScheduler:
    """UniPC in flow mode (flow prediction, flow sigmas shifted by `flow_shift`), as Wan-derived checkpoints ship."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )  # fmt: skip

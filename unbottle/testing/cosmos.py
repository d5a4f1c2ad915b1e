"""Tiny offline Cosmos-Predict2 text-to-image pipeline (Cosmos2TextToImagePipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/cosmos): a 2-block DiT with self-attention
over the (1, h, w) patch grid and cross-attention to T5 token states, the Wan VAE (×8) and the Karras-σ
FlowMatchEulerDiscreteScheduler the pipeline drives with its EDM preconditioning (σ from 80 down to 0.002). The
pipeline refuses to run without a safety checker; `PassThroughSafetyChecker` stands in for the Cosmos Guardrail
models and passes text and frames through unchanged (the pipeline still quantizes the frames to uint8 around it).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    AutoencoderKLWan,
    Cosmos2TextToImagePipeline,
    CosmosTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from transformers import T5Config, T5EncoderModel

from ._common import finish_pipeline
from .tokenizers import tiny_t5_tokenizer


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """A Cosmos safety checker that accepts every prompt and returns every video unchanged (no guardrail models)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_tracker", torch.zeros(1), persistent=False)

    def check_text_safety(self, prompt: str) -> bool:
        """Every prompt is accepted."""
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        """The frames (F, H, W, 3) uint8, unchanged."""
        return frames


def tiny_cosmos_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Cosmos2TextToImagePipeline:
    """Tiny Cosmos-Predict2 text-to-image (self + cross attention, T5); height/width multiples of 16."""
    # 64×64 image → latents (1, 16, 1, 8, 8) → 16 tokens of 1×2×2 patches; learnable positions cover ≤ 32 per axis
    tokenizer = tiny_t5_tokenizer(512)
    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=True, extra_pos_embed_type="learnable",
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    # z_dim must stay 16: the pipeline normalises latents with the 16-entry default latents_mean/std
    vae = AutoencoderKLWan(
        base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
        )
    )  # fmt: skip
    pipe = Cosmos2TextToImagePipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=PassThroughSafetyChecker(),
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)

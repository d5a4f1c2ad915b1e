"""Tiny offline Wan 2.2 A14B-style text-to-video: WanPipeline with two experts switched at `boundary_ratio`."""

from __future__ import annotations

import torch
from diffusers import WanPipeline, WanTransformer3DModel

from ._common import finish_pipeline
from .video import tiny_wan_pipeline


def tiny_wan22_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    boundary_ratio: float = 0.875,
) -> WanPipeline:
    """Tiny Wan 2.2 A14B-style pipeline: `transformer` denoises while t ≥ boundary_ratio · 1000, `transformer_2` after
    (two differently seeded experts of the tiny Wan 2.1 shape); height/width multiples of 16, num_frames = 4k+1."""
    base = tiny_wan_pipeline(seed=seed)
    torch.manual_seed(seed + 3)
    expert = WanTransformer3DModel.from_config(base.transformer.config)  # the low-noise expert, its own weights
    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
        transformer=base.transformer, transformer_2=expert, boundary_ratio=boundary_ratio,
    )  # fmt: skip
    return finish_pipeline(pipe, device, dtype)

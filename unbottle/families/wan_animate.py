"""Wan-Animate (WanAnimateTransformer3DModel): self-attention over the video tokens (reference frame first, pose
added in place); the face adapters are cross-attention and stay dense. Sparse attention only (see the record)."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


WAN_ANIMATE = Family(
    "Wan-Animate",
    model_classes=("WanAnimateTransformer3DModel",),
    attention=SelfAttention(r"^blocks\.\d+\.attn1$", _layout),
    # no bottleneck sampling or noise search: WanAnimatePipeline draws fresh noise for every segment after the first
    # (`latents=` reaches only the first), returns only the last segment's latents, and takes no `sigmas=`
    # no structured guidance: its cross-attention sees [image tokens, text] joined inside the forward
    parallel_refusal=("its face-adapter attention groups the video tokens by frame, which a sequence shard splits "
                      "across ranks"),
)

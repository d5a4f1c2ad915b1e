"""Cosmos (CosmosTransformer3DModel): video-only self-attention over the (F, H, W) patch grid; text is
cross-attention.

Cosmos2TextToImagePipeline (Cosmos-Predict2) has sparse attention and structured guidance only. It runs EDM
preconditioning on a Karras-σ FlowMatchEulerDiscreteScheduler: latents x = x0 + σ·ε with σ from σ_max = 80 down to
0.002, `latents=` the unit noise ε it scales by σ_max itself, and a σ grid it builds itself (no `sigmas=`) and reads as
EDM σ.
"""

from __future__ import annotations

import torch

from .family import CrossAttentionText, Family, SelfAttention
from .layout import TokenLayout, video_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    return TokenLayout(video_grid(model, bound))


COSMOS = Family(
    "Cosmos",
    model_classes=("CosmosTransformer3DModel",),
    pipeline_classes=("Cosmos2TextToImagePipeline",),
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
    # no bottleneck sampling: a stage's σ grid reaches the pipeline as a scheduler it reads as EDM σ, and a restart
    # at strength w needs latents ((1 − w)·x̂0 + w·ε) / ((1 − w)·σ_max), which the latent seams cannot know
    # no noise optimization: the pipeline passes its pixels through numpy for the mandatory safety checker, so a
    # differentiable call fails there (exploration, best of N seeds, works on it as on any pipeline)
    guidance=CrossAttentionText(
        "transformer", lambda model: getattr(model, "crossattn_proj", None), lambda pipe, prompt, arguments: prompt,
        max_length_arg="max_sequence_length",  # the prompt as given; Cosmos 2.5 configs project the text first
    ),
)

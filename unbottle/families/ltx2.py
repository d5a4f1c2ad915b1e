"""LTX-2 (LTX2VideoTransformer3DModel): audio-video; sparse on the video self-attention, video tokens only."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    # packed video tokens (B, F·H·W, C) in raster order over the latent (frames, height, width) the forward is given;
    # without them (explicit video_coords) the tokens are a 1-D sequence
    frames, height, width = bound.get("num_frames"), bound.get("height"), bound.get("width")
    if frames is None or height is None or width is None:
        return TokenLayout()
    p, pt = model.config.patch_size, model.config.patch_size_t
    grid = (int(frames) // pt, int(height) // p, int(width) // p)
    return TokenLayout(grid if grid[0] * grid[1] * grid[2] == bound["hidden_states"].shape[1] else None)


LTX2 = Family(
    "LTX-2",
    model_classes=("LTX2VideoTransformer3DModel",),
    # video self-attention only: the audio stream's self-attention (a short 1-D sequence) and the text and
    # audio↔video cross-attentions stay dense
    attention=SelfAttention(r"^transformer_blocks\.\d+\.attn1$", _layout),
)

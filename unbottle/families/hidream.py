"""HiDream-I1 (HiDreamImageTransformer2DModel): joint attention, image patches first, then T5 and Llama text tokens."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, image_grid


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    hidden = bound["hidden_states"]
    if hidden.dim() != 4 or hidden.shape[-2] != hidden.shape[-1] or bound.get("hidden_states_masks") is not None:
        return TokenLayout()  # non-square latents are padded to the model's max sequence: 1-D
    # text after the image: T5, the last Llama layer, and the block's own Llama layer (each of the Llama length)
    t5 = int(bound["encoder_hidden_states_t5"].shape[1])
    llama = bound["encoder_hidden_states_llama3"]
    llama_len = int((llama[0] if isinstance(llama, (list, tuple)) else llama).shape[-2])
    return TokenLayout(image_grid(model, bound), t5 + 2 * llama_len, text_first=False)


HIDREAM_IMAGE = Family(
    "HiDreamImage",
    model_classes=("HiDreamImageTransformer2DModel",),
    attention=SelfAttention(r"^(double|single)_stream_blocks\.\d+\.block\.attn1$", _layout,
                             timestep_arg="timesteps"),
)

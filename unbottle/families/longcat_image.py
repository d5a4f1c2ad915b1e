"""LongCat-Image (LongCatImageTransformer2DModel): joint text-image attention, text first, packed latent tokens."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout, text_length
from .parallel import joint_ids_plan


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    ids = bound.get("img_ids")
    if not isinstance(ids, torch.Tensor):
        return TokenLayout(None, text_length(bound))
    ids = ids[0] if ids.dim() == 3 else ids  # (N, 3): (modality, row, column), rows and columns offset past the text
    rows, cols = ids[:, 1], ids[:, 2]
    h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
    n = bound["hidden_states"].shape[1]
    return TokenLayout((1, h, w) if h * w == n else None, text_length(bound), text_first=True)


# no pipeline parts: LongCatImagePipeline cannot take an encoded prompt (its encode_prompt takes len(prompt) of the
# prompt=None that check_inputs demands beside prompt_embeds), and bottleneck sampling and noise search pass one
LONGCAT_IMAGE = Family(
    "LongCat-Image",
    model_classes=("LongCatImageTransformer2DModel",),
    attention=SelfAttention(r"^(single_)?transformer_blocks\.\d+\.attn$", _layout),
    parallel_plan=joint_ids_plan,  # FLUX.1's plan fits: diffusers gives this class none
)

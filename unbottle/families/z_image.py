"""Z-Image (ZImageTransformer2DModel): joint attention, image patches first, caption last (each padded to a multiple
of 32 tokens); the image-only noise refiner too (the caption-only context refiner stays dense)."""

from __future__ import annotations

import torch

from .family import Family, SelfAttention
from .layout import TokenLayout

_MULTIPLE = 32  # the model pads the image and the caption tokens each to a multiple of this


def _padded(n: int) -> int:
    return n + (-n) % _MULTIPLE


def _layout(model: torch.nn.Module, bound: dict) -> TokenLayout:
    x, captions = bound["x"], bound["cap_feats"]
    if not isinstance(x[0], torch.Tensor):  # omni mode: [caption, condition images, image, SigLIP]: 1-D
        return TokenLayout()
    p, pf = int(bound.get("patch_size", 2)), int(bound.get("f_patch_size", 1))
    shapes = {tuple(xi.shape[1:]) for xi in x}  # (F, H, W) per sample
    lengths = {_padded(len(c)) for c in captions}
    if len(shapes) != 1 or len(lengths) != 1:  # samples of different sizes: padded to the longest, 1-D
        return TokenLayout()
    f, h, w = shapes.pop()
    grid = (f // pf, h // p, w // p)
    if grid[0] * grid[1] * grid[2] % _MULTIPLE:  # image padding between image and caption: no grid explains it
        return TokenLayout()
    return TokenLayout(grid, lengths.pop(), text_first=False)


Z_IMAGE = Family(
    "ZImage",
    model_classes=("ZImageTransformer2DModel",),
    attention=SelfAttention(r"^(layers|noise_refiner)\.\d+\.attention$", _layout, timestep_arg="t",
                             timestep_rising=True),  # the pipeline passes t = 1 − σ
)

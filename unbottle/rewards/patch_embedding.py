"""ViT patch embeddings as matrix products, so that a reward's gradient w.r.t. the pixels is cheap (ReNO, CARINOX).

A vision transformer embeds patches with a `Conv2d` whose kernel equals its stride (ViT-H-14: 3 → 1280 channels,
14 × 14). cuDNN computes that convolution's input gradient with a generic strided-dgrad kernel: 87.6 ms per call at
224² in fp16 on an H100, 64% of a CARINOX gradient step's GPU time with two ViT-H-14 rewards (bench/hotspots.py).
The same map is a reshape of the image into patches times the flattened kernel, whose backward is one small GEMM and
a reshape. `PatchConv2d` is that `Conv2d` with this forward (same parameters, same state_dict, same numbers up to
summation order); `patch_embeddings_as_matmuls` switches every eligible convolution of a module to it in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PatchConv2d(torch.nn.Conv2d):
    """A `Conv2d` with kernel = stride and no padding, computed as patches @ kernel (ViT, Dosovitskiy et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) → (B, C_out, H / kh, W / kw)
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        if h % kh or w % kw:  # a ragged border: the convolution drops it; keep its exact semantics
            return super().forward(x)
        gh, gw = h // kh, w // kw
        patches = x.reshape(b, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * kh * kw)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)  # (B, gh·gw, C_out)
        return out.transpose(1, 2).reshape(b, self.out_channels, gh, gw)  # the convolution's (B, C_out, gh, gw)


def _eligible(conv: torch.nn.Module) -> bool:
    return (
        type(conv) is torch.nn.Conv2d
        and tuple(conv.kernel_size) == tuple(conv.stride)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
    )


def patch_embeddings_as_matmuls(module: torch.nn.Module) -> int:
    """Switch every kernel-equals-stride `Conv2d` in `module` to `PatchConv2d` (in place); returns how many."""
    convs = [m for m in module.modules() if _eligible(m)]
    for conv in convs:
        conv.__class__ = PatchConv2d
    return len(convs)

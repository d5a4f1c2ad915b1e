"""Sparse attention inside `torch.compile`: each caught self-attention call is one opaque custom op.

The engine decides on the host (which step kind, which pattern, which kernel; it keeps Re-ttention's statistics and
the patterns between calls), which Dynamo cannot trace without a graph break per layer. Under compilation the
processor (projections, norms, RoPE, output projection) and the rest of each block are traced as usual, and the one
attention call becomes `unbottle::sparse_sdpa`: an op the compiled graph calls and does not look into, as diffusers'
dispatcher registers its kernel backends. So `transformer.compile_repeated_blocks(fullgraph=True)` compiles each
block in one graph around it. A layer is named by a token registered here, so the op finds its `SparseLayer`. The
token reaches the op as a CPU scalar tensor, an input of the graph: as an int it would be a constant of the graph,
and every block would compile its own.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Protocol

import torch
import torch.nn.functional as F


class _Layer(Protocol):
    def attend(self, q, k, v, attn_mask=None, scale=None) -> torch.Tensor | None: ...


_LAYERS: weakref.WeakValueDictionary[int, _Layer] = weakref.WeakValueDictionary()
_TOKENS = itertools.count(1)


def register_layer(layer: _Layer) -> torch.Tensor:
    """A token for `layer` (a CPU int64 scalar) that `sparse_sdpa` resolves while the layer lives."""
    token = next(_TOKENS)
    _LAYERS[token] = layer
    return torch.tensor(token, dtype=torch.int64)


@torch.library.custom_op("unbottle::sparse_sdpa", mutates_args=())
def sparse_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, scale: float,
    layer: torch.Tensor,
) -> torch.Tensor:
    """One self-attention call (B, H, N, D) of sparse layer `layer`: its engine's output, or exact SDPA on the steps
    it keeps dense (Re-ttention, Chen et al. 2025; SparseD, Wang et al. 2025)."""
    found = _LAYERS.get(int(layer))  # a CPU tensor: no device sync
    out = None if found is None else found.attend(q, k, v, attn_mask=attn_mask, scale=scale)
    if out is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out.contiguous()  # (B, H, N, Dv), a new tensor in the layout the fake promises


@sparse_sdpa.register_fake
def _sparse_sdpa_fake(q, k, v, attn_mask, scale, layer):
    return q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, N, Dv), contiguous

"""Exact cross-attention on compactly padded prompts: train on T text positions what the pipeline runs on 512.

`WanPipeline.__call__` pads every prompt to 512 positions with zero embeddings; in a Wan block those become identical
pad keys and values (the text projection of a zero row). Softmax over n identical keys of logit s equals one key of
logit s + log n, so a prompt with L tokens padded to T < 512 positions gives the same attention output as at 512 if
each of its T − L pad keys has its logit raised by log((512 − L) / (T − L)). `CompactTextAttnProcessor` does that:
it finds the pad rows as the rows equal to the last one (callers keep T > L so the last row is padding), and feeds
the bias to SDPA as an additive mask. At T = 512 the bias is 0 and it computes what `WanAttnProcessor` computes.

For the shapes DiT this cuts the cross-attention (keys/values over 512 positions: about a third of a layer's
multiply-adds at 256 image tokens) to the ~32 positions a caption needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CompactTextAttnProcessor:
    """Wan cross-attention whose pad keys count as if the prompt were padded to `length` positions."""

    def __init__(self, length: int = 512) -> None:
        self.length = length

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is None or attn.add_k_proj is not None or rotary_emb is not None:
            raise ValueError("CompactTextAttnProcessor is for text cross-attention (attn2) of a T2V Wan block")
        b, t = encoder_hidden_states.shape[:2]
        if t > self.length:
            raise ValueError(f"prompt embeddings have {t} positions; at most length={self.length}")
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # (B, H, N, D)
        text = encoder_hidden_states  # (B, T, C)
        k = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # (B, H, T, D)
        v = attn.to_v(text).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # (B, H, T, D)
        pad = (text == text[:, -1:]).all(-1)  # (B, T): rows equal to the last
        n_pad = pad.sum(-1, keepdim=True)  # (B, 1) pad rows present (≥ 1)
        true_pad = n_pad + (self.length - t)  # (B, 1) pad rows at `length` positions
        bias = torch.where(pad, torch.log(true_pad.float() / n_pad.float()), 0.0)  # (B, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :].to(q.dtype))  # (B, H, N, D)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)  # (B, N, H·D)
        return attn.to_out[1](attn.to_out[0](out))


def set_compact_text(transformer, length: int = 512) -> dict:
    """Put `CompactTextAttnProcessor` on every block's cross-attention; returns the processors it replaced."""
    original = dict(transformer.attn_processors)
    processors = {name: CompactTextAttnProcessor(length) if ".attn2." in name else proc
                  for name, proc in original.items()}  # fmt: skip
    transformer.set_attn_processor(processors)
    return original

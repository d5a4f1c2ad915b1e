"""Ulysses attention for stock processors that call `F.scaled_dot_product_attention` themselves (SD3, PixArt,
CogVideoX): diffusers' context-parallel plans shard their tokens, but only processors that go through diffusers'
dispatcher receive the parallel config and exchange heads for tokens.

A hook on each of the family's self-attention modules, registered when the family's plan is built, does nothing
until the model is under context parallelism; then a `TorchFunctionMode`, active only while the module runs, catches
its one SDPA call: q/k/v (B, H, N_local, D) — after projections, QK-norm and RoPE, each applied per token — go through
an all-to-all over the Ulysses group to (B, H/W, N, D) (rank r: heads [r·H/W, (r+1)·H/W), the ranks' local sequences
one after another; of unequal lengths under `ulysses_anything`), the stock SDPA attends, and a second all-to-all hands
back (B, H, N_local, D). Without a mask attention does not depend on the token order, so the ranks'
[image₀, text₀, image₁, text₁, …] order is exact.
Cross-attention to the whole text runs locally. No processor code is copied.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..families import family_for_model
from ..families.parallel import on_sdpa_plan
from .attach import sparse_modules
from .context_parallel import ULYSSES_SDPA_HOOK, check_heads_divide, context_parallel_config
from .diffusers_compat import ModelHook, forward_under, has_hook, register_hook, remove_hooks, ulysses_group

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _all_to_all(pieces: list[torch.Tensor], sizes: list[int], group: object) -> list[torch.Tensor]:
    """Piece j to rank j; piece j of the result (`sizes[j]` elements, flat) from rank j."""
    import torch.distributed as dist

    sent = torch.cat([p.reshape(-1) for p in pieces])
    received = sent.new_empty(sum(sizes))
    dist.all_to_all_single(received, sent, output_split_sizes=sizes, input_split_sizes=[p.numel() for p in pieces],
                           group=group)  # fmt: skip
    return list(received.split(sizes))


def rank_lengths(n: int, degree: int, group: object, device: torch.device, even: bool) -> list[int]:
    """Every rank's local sequence length (`n` on every rank where the shards are `even`, else gathered)."""
    if even:
        return [n] * degree
    import torch.distributed as dist

    lengths = [torch.empty(1, dtype=torch.int64, device=device) for _ in range(degree)]
    dist.all_gather(lengths, torch.tensor([n], dtype=torch.int64, device=device), group=group)
    return [int(length) for length in lengths]


def heads_to_sequence(x: torch.Tensor, lengths: list[int], group: object) -> torch.Tensor:
    """(B, H, N, D) this rank's tokens of every head → (B, H/W, ΣNⱼ, D) every rank's tokens (rank j: `lengths[j]`,
    in rank order) of this rank's heads."""
    b, h, _, d = x.shape
    per_rank = h // len(lengths)
    pieces = _all_to_all(list(x.split(per_rank, dim=1)), [b * per_rank * n * d for n in lengths], group)
    return torch.cat([p.view(b, per_rank, n, d) for p, n in zip(pieces, lengths, strict=True)], dim=2)


def sequence_to_heads(x: torch.Tensor, lengths: list[int], rank: int, group: object) -> torch.Tensor:
    """(B, H/W, ΣNⱼ, D) every rank's tokens of this rank's heads → (B, H, N, D) this rank's tokens of every head."""
    b, per_rank, _, d = x.shape
    n = lengths[rank]
    pieces = _all_to_all(list(x.split(lengths, dim=2)), [b * per_rank * n * d] * len(lengths), group)
    return torch.cat([p.view(b, per_rank, n, d) for p in pieces], dim=1)


class _UlyssesSDPA(TorchFunctionMode):
    """Runs `F.scaled_dot_product_attention` calls over the Ulysses group (self-attention without a mask only)."""

    def __init__(self, name: str, degree: int, group: object, even: bool) -> None:
        super().__init__()
        self.name, self.degree, self.group, self.even = name, degree, group, even

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        call = dict(zip(_SDPA_ARGS, args, strict=False)) | kwargs
        q, k, v = call.pop("query"), call.pop("key"), call.pop("value")
        mask, causal = call.pop("attn_mask", None), call.pop("is_causal", False)
        if mask is not None or causal:
            raise ValueError(
                f"context parallelism: layer {self.name!r} attends with "
                f"{'an attention mask' if mask is not None else 'is_causal=True'}, which unbottle's Ulysses attention "
                "does not shard; allowed: self-attention without a mask (pass no attention mask under parallelism)"
            )
        if q.dim() != 4 or k.shape != v.shape or k.shape[:3] != q.shape[:3]:
            raise ValueError(
                f"context parallelism: layer {self.name!r} called scaled_dot_product_attention with query "
                f"{tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}; unbottle's Ulysses attention takes "
                "self-attention (B, H, N, D) with as many key/value heads and tokens as query ones"
            )
        import torch.distributed as dist

        lengths = rank_lengths(q.shape[2], self.degree, self.group, q.device, self.even)
        q, k, v = (heads_to_sequence(x, lengths, self.group) for x in (q, k, v))  # (B, H/W, ΣNⱼ, D)
        out = func(q, k, v, **call)  # (B, H/W, ΣNⱼ, D)
        return sequence_to_heads(out, lengths, dist.get_rank(self.group), self.group)  # (B, H, N, D)


class UlyssesSDPAHook(ModelHook):
    """On a self-attention module of `model`: its SDPA call runs over the Ulysses group while `model` is under
    Ulysses context parallelism and the module's processor has no parallel config of its own; else untouched."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = weakref.ref(model), name

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        forward = forward_under(self)
        model = self.model()
        cp = context_parallel_config(model) if model is not None else None
        if cp is None or getattr(getattr(module, "processor", None), "_parallel_config", None) is not None:
            return forward(*args, **kwargs)  # one process, or diffusers' dispatcher exchanges the heads itself
        degree = _ulysses_degree(cp, model, self.name, module)
        if degree == 1:
            return forward(*args, **kwargs)
        with _UlyssesSDPA(self.name, degree, ulysses_group(cp), even=not getattr(cp, "ulysses_anything", False)):
            return forward(*args, **kwargs)


def _ulysses_degree(cp: object, model: torch.nn.Module, name: str, module: torch.nn.Module) -> int:
    """The Ulysses degree of `cp`; a ValueError for what this attention cannot run (ring, heads)."""
    ring, ulysses = int(cp.ring_degree or 1), int(cp.ulysses_degree or 1)
    if ring > 1:
        raise ValueError(
            f"context parallelism: {type(model).__name__}'s attention calls scaled dot-product attention directly and "
            f"runs under unbottle's Ulysses attention only, but ContextParallelConfig ring_degree={ring} (allowed 1); "
            f"use ContextParallelConfig(ulysses_degree={ring * ulysses}) instead"
        )
    check_heads_divide(f"context parallelism: layer {name!r} of {type(model).__name__}", module, ulysses)
    return ulysses


def ulysses_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The self-attention modules of `model` that carry unbottle's Ulysses attention, by name."""
    return {name: m for name, m in model.named_modules() if has_hook(m, ULYSSES_SDPA_HOOK)}


def ready_ulysses_attention(model: torch.nn.Module) -> None:
    """Give each self-attention module of `model`'s family (SDPA-direct processors) unbottle's Ulysses attention,
    inert until the model is under context parallelism (idempotent)."""
    family = family_for_model(model, None, required=False)
    if family is None or family.attention is None:
        raise ValueError(
            f"unbottle's Ulysses attention needs a registered family with a self-attention record, and "
            f"{type(model).__name__} has none"
        )
    for name, module in sparse_modules(model, family.attention).items():
        if not has_hook(module, ULYSSES_SDPA_HOOK):
            register_hook(module, UlyssesSDPAHook(model, name), ULYSSES_SDPA_HOOK)


def remove_ulysses_attention(model: torch.nn.Module) -> None:
    """Remove unbottle's Ulysses attention from every module of `model`."""
    remove_hooks(model, ULYSSES_SDPA_HOOK, ULYSSES_SDPA_HOOK)


on_sdpa_plan(ready_ulysses_attention)

"""Context parallelism (diffusers' Ulysses): each rank's share of the heads, and the token order its attention sees.

Under `model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))` the model's CP plan shards the
sequence over N ranks; before attention an all-to-all gives every rank the whole sequence for H/N of the heads (rank r:
heads [r·H/N, (r+1)·H/N)). That sequence is the ranks' local sequences one after another. Where the text is a stream
of its own, sharded apart from the image tokens (the plan splits `encoder_hidden_states`: Flux, Qwen-Image), a rank's
local sequence is [its text shard, its image shard], so attention sees [text₀, image₀, text₁, image₁, …], not the
family's `TokenLayout` order; `SequenceShards.order` maps between the two. Ring attention (each rank a chunk of the
keys) is refused: patterns and the reshape statistics need every key of a row on one rank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from ..families import family_for_model
from ..families.layout import TokenLayout
from .diffusers_compat import has_hook

_SPLIT_HOOK = "cp_input---"  # diffusers' name prefix of a CP plan's input-splitting hooks
TEXT_STREAM = "encoder_hidden_states"  # the input a plan splits when the text is a sharded stream of its own
ULYSSES_SDPA_HOOK = "unbottle_ulysses_sdpa"  # unbottle's Ulysses attention on an SDPA-direct module (ulysses_sdpa.py)


@dataclass(frozen=True)
class SequenceShards:
    """Ulysses context parallelism as one rank's attention sees it: `degree` ranks, this one `rank`, and whether the
    text tokens are sharded apart from the image tokens."""

    degree: int
    rank: int
    text_sharded: bool
    group: object = field(default=None, compare=False, repr=False)  # the Ulysses process group (collectives)

    def heads(self, total: int) -> slice:
        """This rank's heads of a layer with `total` heads."""
        per_rank = total // self.degree
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def order(
        self, layout: TokenLayout, n: int, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(gather, scatter) (n,) int64 indices between the sequence attention sees and the layout's order:
        canonical = seen[..., gather, :], seen = canonical[..., scatter, :]; None where the two agree."""
        return _order(self.degree, layout, n, str(device)) if self.text_sharded else None


@functools.lru_cache(maxsize=64)
def _order(degree: int, layout: TokenLayout, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    (f, h, w), text_len, text_first = layout.resolve(n)
    if text_len == 0:
        return None
    image = f * h * w
    text_at, image_at = (0, text_len) if text_first else (image, 0)
    texts = torch.arange(text_len).tensor_split(degree)  # diffusers shards by chunk (tensor_split when uneven)
    images = torch.arange(image).tensor_split(degree)
    pieces = []
    for t, i in zip(texts, images, strict=True):  # rank by rank: its local sequence
        pieces.extend((t + text_at, i + image_at) if text_first else (i + image_at, t + text_at))
    scatter = torch.cat(pieces)  # canonical index of each seen position
    return torch.argsort(scatter).to(device), scatter.to(device)


def in_order(mask: torch.Tensor | None, gather: torch.Tensor) -> torch.Tensor | None:
    """An attention mask (…, Nq or 1, Nk or 1) with its query and key positions reordered by `gather`."""
    if mask is None:
        return None
    n = gather.shape[0]
    if mask.shape[-1] == n:
        mask = mask.index_select(-1, gather)
    if mask.dim() >= 2 and mask.shape[-2] == n:
        mask = mask.index_select(-2, gather)
    return mask


def _split_inputs(model: torch.nn.Module) -> set[str]:
    """The forward inputs the model's applied CP plan splits (from diffusers' split hooks on its modules)."""
    names: set[str] = set()
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name in getattr(registry, "_hook_order", ()):
            if hook_name.startswith(_SPLIT_HOOK):
                names.update(k for k in getattr(registry.get_hook(hook_name), "metadata", {}) if isinstance(k, str))
    return names


def check_heads_divide(layer: str, module: torch.nn.Module, ulysses: int) -> None:
    """A ValueError, beginning with `layer`, when the Ulysses degree does not divide the module's heads."""
    heads = getattr(module, "heads", None)
    if isinstance(heads, int) and heads % ulysses:
        divisors = [d for d in range(2, heads + 1) if heads % d == 0]
        raise ValueError(
            f"{layer} has {heads} heads, which ContextParallelConfig ulysses_degree={ulysses} does not divide; "
            f"allowed ulysses_degree: a divisor of {heads} ({', '.join(map(str, divisors)) or 'none above 1'})"
        )


def context_parallel_config(model: torch.nn.Module) -> object | None:
    """The model's diffusers `ContextParallelConfig` (after `enable_parallelism`), or None."""
    parallel = getattr(model, "_parallel_config", None)
    return getattr(parallel, "context_parallel_config", None)


def sequence_shards(model: torch.nn.Module, modules: dict[str, torch.nn.Module]) -> SequenceShards | None:
    """How context parallelism shards `model`'s sparse layers `modules` (by name), None without it; raises for ring
    attention and for a Ulysses degree that does not divide a layer's heads."""
    cp = context_parallel_config(model)
    if cp is None:
        return None
    ring, ulysses = int(cp.ring_degree or 1), int(cp.ulysses_degree or 1)
    if ring > 1:
        raise ValueError(
            f"sparse attention supports context parallelism by Ulysses only, but this {type(model).__name__} runs "
            f"ring attention (ContextParallelConfig ring_degree={ring}, allowed 1); use "
            f"ContextParallelConfig(ulysses_degree={ring * ulysses}) instead"
        )
    if ulysses == 1:
        return None
    if any(has_hook(m, ULYSSES_SDPA_HOOK) for m in model.modules()):
        family = family_for_model(model, None, required=False)
        raise ValueError(
            f"sparse attention under context parallelism (ContextParallelConfig ulysses_degree={ulysses}) is not "
            f"supported on {family.name if family else 'this family'} ({type(model).__name__}): its attention "
            "processors call scaled dot-product attention directly and run under unbottle's Ulysses attention, which "
            "sparse attention does not compose with; use sparse attention in one process, or context parallelism "
            "without it"
        )
    for name, module in modules.items():
        check_heads_divide(f"sparse attention under context parallelism: layer {name!r}", module, ulysses)
    mesh = cp._ulysses_mesh
    return SequenceShards(ulysses, int(cp._ulysses_local_rank), TEXT_STREAM in _split_inputs(model), mesh.get_group())


def check_parallel_unchanged(model: torch.nn.Module, known: object | None) -> None:
    """Raise if the model's parallel config is not the one sparse attention was enabled under (`known`)."""
    current = getattr(model, "_parallel_config", None)
    if current is known:
        return
    cp = getattr(current, "context_parallel_config", None)
    if cp is not None and int(cp.ring_degree or 1) > 1:
        sequence_shards(model, {})  # the ring refusal
    raise RuntimeError(
        f"the parallelism of this {type(model).__name__} changed after sparse attention was enabled; call "
        "unbottle.disable_sparse_attention, then unbottle.enable_sparse_attention again (enable parallelism first)"
    )


def own_heads(pattern: torch.Tensor, shards: SequenceShards | None, total: int) -> torch.Tensor:
    """This rank's heads of a pattern tensor (B, H, ...) holding all `total` heads (H = 1: one for every head)."""
    if shards is None or pattern.shape[1] == 1:
        return pattern
    return pattern[:, shards.heads(total)].contiguous()


def all_heads(patterns: list[tuple[tuple, tuple[torch.Tensor, torch.Tensor]]], shards: SequenceShards) -> list:
    """Every rank's (key, (indices (1, H/N, nQ, K), counts (1, H/N, nQ))) patterns joined over the heads in rank
    order, rows padded to the widest K (a collective: every rank calls it, with the same keys in the same order)."""
    import torch.distributed as dist

    gathered: list = [None] * shards.degree
    dist.all_gather_object(gathered, [(k, i.cpu(), c.cpu()) for k, (i, c) in patterns], group=shards.group)
    if any([k for k, _, _ in g] != [k for k, _ in patterns] for g in gathered):
        raise RuntimeError(
            "the ranks hold head patterns for different layers or sizes; run the same calls on every rank"
        )
    joined = []
    for (key, _), per_rank in zip(patterns, zip(*gathered, strict=True), strict=True):
        width = max(i.shape[-1] for _, i, _ in per_rank)
        indices = [torch.nn.functional.pad(i, (0, width - i.shape[-1])) for _, i, _ in per_rank]
        joined.append((key, (torch.cat(indices, 1), torch.cat([c for _, _, c in per_rank], 1))))
    return joined


def barrier(shards: SequenceShards | None) -> None:
    """Wait for every rank of the Ulysses group (no-op without context parallelism)."""
    if shards is not None:
        import torch.distributed as dist

        dist.barrier(group=shards.group)

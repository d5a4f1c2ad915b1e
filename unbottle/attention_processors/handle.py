"""`SparseAttentionHandle`: what `enable_sparse_attention` changed on a model, for diffusers denoisers and
transformers models alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .block_mask import num_blocks
from .config import SparseAttentionConfig
from .engine import PatternStore
from .patterns import kept_fraction

if TYPE_CHECKING:
    from ..families import Family
    from .dlm_state import DLMSparseState
    from .state import LayerStateHook, ModelClockHook

HANDLE_ATTR = "_unbottle_sparse"  # the enabled model's handle


def layer_densities(store: PatternStore) -> dict[str, float]:
    """Each layer's realized density: the kept-tile fraction of its cached patterns, or of the tiles its "dynamic"
    sparse steps computed (the mean over resolutions)."""
    per_layer: dict[str, list[float]] = {}
    for key, (_, counts) in store.patterns.items():  # key: (layer, tokens, block size, ...)
        density = store.densities.get(key)
        per_layer.setdefault(key[0], []).append(
            density if density is not None else kept_fraction(counts, num_blocks(key[1], key[2]))
        )
    for (layer, *_), (kept, tiles) in store.dynamic.items():  # key: (layer, tokens, block size)
        per_layer.setdefault(layer, []).append(int(kept) / tiles)
    return {layer: sum(values) / len(values) for layer, values in per_layer.items()}


def mean_density(densities: dict[str, float]) -> float | None:
    """The mean of per-layer densities, None when there are none."""
    return sum(densities.values()) / len(densities) if densities else None


@dataclass
class SparseAttentionHandle:
    """What `enable_sparse_attention` changed, to undo it exactly, and the state and patterns of its sparse layers.

    A diffusers denoiser's handle holds its family, processors before, per-CFG-branch layer states and step clock; a
    transformers model's its attention implementations before, its generation clock and forward pre-hook.
    """

    model: torch.nn.Module
    config: SparseAttentionConfig
    store: PatternStore  # patterns shared by the layers (diffusers) and pattern computations per layer (both)
    originals: object  # diffusers: processors by `attn_processors` key (same objects); transformers: [(config, impl)]
    family: Family | None = None  # diffusers: the model's family (its `attention` part picks and reads the layers)
    layer_hooks: dict[str, LayerStateHook] = field(default_factory=dict)  # diffusers: per-branch states, by module
    clock: ModelClockHook | None = None  # diffusers: the denoiser's step clock
    state: DLMSparseState | None = None  # transformers: the generation clock and its layers' states
    hook: object | None = None  # transformers: the forward pre-hook's RemovableHandle
    undo: Callable[[torch.nn.Module], None] | None = None  # the front's disable, given the model

    @property
    def pattern_computations(self) -> dict[str, int]:
        """How many times each layer computed a pattern (cached: once per resolution; on a transformers model once per
        generation and sequence length)."""
        return dict(self.store.computed)

    @property
    def pattern_densities(self) -> dict[str, float]:
        """Each layer's realized density (kept tiles / (nQ·nK) of its cached patterns, averaged over batch, heads and
        query-block rows, and over its resolutions; "dynamic": of all tiles its sparse steps computed), by module;
        layers without a pattern yet are absent."""
        return layer_densities(self.store)

    @property
    def realized_density(self) -> float | None:
        """The mean of `pattern_densities` over the layers: what density (or coverage) and the forced tiles gave; None
        before any pattern is cached (for "dynamic": before its first sparse step)."""
        return mean_density(self.pattern_densities)

    def reset(self) -> None:
        """Forget every layer's statistics and the step clock; diffusers' cached patterns stay, while a transformers
        model starts a new generation (its patterns too): the next forward is its step 0."""
        if self.state is not None:
            self.state.start_generation()
        for hook in self.layer_hooks.values():
            hook.states.clear()
        if self.clock is not None:
            self.clock.clocks.clear()

    def disable(self) -> None:
        """`unbottle.disable_sparse_attention` on this model."""
        if self.undo is not None:
            self.undo(self.model)


@dataclass
class PipelineSparseAttention:
    """Sparse attention on a pipeline with several denoisers (Wan 2.2's two experts): one handle per denoiser, each
    with its own layer states and patterns, one step clock shared by all (an expert takes over mid-generation)."""

    handles: dict[str, SparseAttentionHandle]  # by pipeline component ("transformer", "transformer_2")
    config: SparseAttentionConfig

    def __getitem__(self, component: str) -> SparseAttentionHandle:
        return self.handles[component]

    @property
    def layer_hooks(self) -> dict[str, LayerStateHook]:
        """Every denoiser's per-branch layer states, by `component.module`."""
        return {f"{c}.{name}": hook for c, h in self.handles.items() for name, hook in h.layer_hooks.items()}

    @property
    def pattern_computations(self) -> dict[str, int]:
        """How many times each layer of each denoiser computed a pattern, by `component.module`."""
        return {f"{c}.{name}": n for c, h in self.handles.items() for name, n in h.pattern_computations.items()}

    @property
    def pattern_densities(self) -> dict[str, float]:
        """Each layer's realized density of each denoiser, by `component.module`."""
        return {f"{c}.{name}": d for c, h in self.handles.items() for name, d in h.pattern_densities.items()}

    @property
    def realized_density(self) -> float | None:
        """The mean of `pattern_densities` over every denoiser's layers; None before any pattern is made."""
        return mean_density(self.pattern_densities)

    def reset(self) -> None:
        """Forget every denoiser's statistics and the shared step clock; cached patterns stay."""
        for handle in self.handles.values():
            handle.reset()

    def disable(self) -> None:
        """`unbottle.disable_sparse_attention` on every denoiser."""
        for handle in self.handles.values():
            handle.disable()

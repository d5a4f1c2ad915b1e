"""Checks of sparse attention on one tiny denoiser, shared by the family test files.

Enabled at density 1.0 the output is stock and disabling restores the very processors; a density that keeps every
block runs the block-sparse path and still matches stock; a low density changes the output and disabling gives stock
again; and the family's token layout explains every sparse self-attention call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

import unbottle
from unbottle.attention_processors import processor as processor_module
from unbottle.attention_processors.enable import attention_processors
from unbottle.families import TokenLayout, family_for_model

Run = Callable[[torch.nn.Module, dict], torch.Tensor]  # (model, inputs) -> output, without gradients


class Tiny(NamedTuple):
    """A tiny seeded fp32 denoiser, its inputs and stock output, and what its family should make of it."""

    model: torch.nn.Module
    inputs: dict
    stock: torch.Tensor
    family: str  # the family's registered name
    modules: frozenset[str] | None  # the sparse self-attention modules; None: those the family selects (2 or more)
    layout: tuple[tuple[int, int, int], int, bool]  # (grid, text_len, text_first) of a joint call


class Call(NamedTuple):
    """One sparse attention call, as the spy on `SparseLayer.attend` saw it."""

    layer: str
    batch: int
    tokens: int
    layout: TokenLayout | None
    masked: bool


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of two outputs, in fp64."""
    return float((a.double() - b.double()).abs().max())


def sparse_modules(case: Tiny) -> set[str]:
    """The case's sparse modules: as given, or every processor's module the family selects (at least 2)."""
    if case.modules is not None:
        return set(case.modules)
    family = family_for_model(case.model, "sparse")
    selected = {name for name in (key.removesuffix(".processor") for key in attention_processors(case.model))
                if family.attention.selects(name)}  # fmt: skip
    assert len(selected) >= 2, selected
    return selected


def sparse_run(case: Tiny, run: Run, config: unbottle.SparseAttentionConfig) -> tuple[torch.Tensor, object]:
    """The output with sparse attention under `config` and its handle; disabled again afterwards."""
    handle = unbottle.enable_sparse_attention(case.model, config)
    try:
        out = run(case.model, case.inputs)
    finally:
        unbottle.disable_sparse_attention(case.model)
    return out, handle


def check_density_one_is_stock(case: Tiny, run: Run, config: unbottle.SparseAttentionConfig) -> None:
    """At density 1.0 (`config`) only the sparse modules are wrapped, the output is stock, disable restores them."""
    model, inputs, stock = case.model, case.inputs, case.stock
    assert family_for_model(model, "sparse").name == case.family
    modules = sparse_modules(case)
    before = dict(attention_processors(model))
    handle = unbottle.enable_sparse_attention(model, config)
    try:
        current = attention_processors(model)
        wrapped = {k for k, p in current.items() if isinstance(p, unbottle.SparseAttnProcessor)}
        assert wrapped == {f"{n}.processor" for n in modules} and set(handle.layer_hooks) == modules
        assert all(current[k].processor is before[k] for k in wrapped)  # each wraps the stock processor
        out = run(model, inputs)
    finally:
        unbottle.disable_sparse_attention(model)
    assert handle.pattern_computations == {}  # density 1.0: the stock SDPA, no pattern
    assert out.shape == stock.shape and max_diff(out, stock) <= 1e-5
    after = attention_processors(model)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert torch.equal(run(model, inputs), stock)  # disabled: stock again


def check_every_block_kept_is_stock(case: Tiny, run: Run, config: unbottle.SparseAttentionConfig) -> None:
    """A density that keeps every block (`config`) runs one pattern per sparse module and matches stock."""
    out, handle = sparse_run(case, run, config)
    assert handle.pattern_computations == dict.fromkeys(sparse_modules(case), 1)  # one pattern per layer
    assert out.shape == case.stock.shape and max_diff(out, case.stock) <= 1e-5


def check_low_density_changes_the_output(case: Tiny, run: Run, config: unbottle.SparseAttentionConfig) -> None:
    """A low density (`config`) runs one pattern per sparse module and changes the output; disabled, it is stock."""
    out, handle = sparse_run(case, run, config)
    assert handle.pattern_computations == dict.fromkeys(sparse_modules(case), 1)
    assert torch.isfinite(out).all() and max_diff(out, case.stock) > 1e-5
    assert torch.equal(run(case.model, case.inputs), case.stock)  # disabled: stock again


def sparse_calls(
    case: Tiny, run: Run, config: unbottle.SparseAttentionConfig, monkeypatch: pytest.MonkeyPatch
) -> list[Call]:
    """Every sparse attention call of one forward under `config`, spied on `SparseLayer.attend`."""
    seen: list[Call] = []
    attend = processor_module.SparseLayer.attend

    def spy(self, q, k, v, attn_mask=None, scale=None):
        info = processor_module.CURRENT_FORWARD.get()
        layout = info.layout if info is not None else None
        seen.append(Call(self.name, q.shape[0], q.shape[2], layout, attn_mask is not None))  # q: (B, H, N, D)
        return attend(self, q, k, v, attn_mask=attn_mask, scale=scale)

    monkeypatch.setattr(processor_module.SparseLayer, "attend", spy)
    sparse_run(case, run, config)
    return seen


def check_the_layout_explains_every_call(
    case: Tiny,
    run: Run,
    config: unbottle.SparseAttentionConfig,
    monkeypatch: pytest.MonkeyPatch,
    *,
    image_only_calls: bool = False,
    batch: int = 1,
    masked: bool | None = None,
) -> None:
    """Each sparse module is called once per forward, with the case's layout, which resolves every call's tokens.

    Every call sees the joint sequence, or with `image_only_calls` the image tokens alone (at least one call joint);
    each call's batch is `batch`, and it carries a mask exactly when `masked` (None: either).
    """
    grid, text_len, text_first = case.layout
    calls = sparse_calls(case, run, config, monkeypatch)
    assert sorted(call.layer for call in calls) == sorted(sparse_modules(case))  # each sparse module caught once
    cells = math.prod(grid)
    for call in calls:
        assert call.layout == TokenLayout(grid, text_len, text_first), call
        assert call.batch == batch and masked in (None, call.masked), call
        if image_only_calls and call.tokens == cells:
            assert call.layout.resolve(call.tokens) == (grid, 0, True), call
        else:
            assert call.tokens == cells + text_len, call
            assert call.layout.resolve(call.tokens) == (grid, text_len, text_first), call
    assert any(call.tokens == cells + text_len for call in calls)  # at least one joint call

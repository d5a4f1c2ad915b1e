"""Sparse attention under diffusers' context parallelism: Ulysses-2 in two gloo processes on the CPU (cp_harness.py)
equals one process for every pattern on tiny Flux (text and image sharded apart) and Wan, over refresh and sparse
steps (reshape on); pattern files move between one and two ranks; ring attention and heads Ulysses cannot split
are refused; SkyReels-V2, which diffusers gives no plan, runs under its family record's. Two spawns (Flux; the video
models); the checks themselves are in cp_checks.py."""

from __future__ import annotations

import cp_checks
import pytest
import torch
from cp_harness import spawn

from unbottle.attention_processors.context_parallel import SequenceShards, in_order, own_heads
from unbottle.families.layout import TokenLayout

TOLERANCE = 1e-5  # fp32, Ulysses-2 vs one process
SPARSE = 1e-4  # sparse steps change the output by more than this (they are not dense steps in disguise)
PATTERNS = ("cached", "dynamic", "window")


@pytest.fixture(scope="module")
def runs() -> dict[str, list[dict]]:
    videos = spawn(cp_checks.videos)
    return {"flux": spawn(cp_checks.flux_all), **{name: [r[name] for r in videos] for name in ("wan", "skyreels")}}


def test_gathered_order_maps_to_the_layout():
    shards = SequenceShards(2, 0, True)
    # 2 text + 4 image tokens: rank 0 holds [t0, i0 i1], rank 1 [t1, i2 i3]; gathered: t0 i0 i1 t1 i2 i3
    gather, scatter = shards.order(TokenLayout((1, 2, 2), text_len=2), 6, "cpu")
    assert scatter.tolist() == [0, 2, 3, 1, 4, 5] and gather.tolist() == [0, 3, 1, 2, 4, 5]
    _, scatter = shards.order(TokenLayout((1, 2, 2), text_len=2, text_first=False), 6, "cpu")
    assert scatter.tolist() == [0, 1, 4, 2, 3, 5]  # i0 i1 t0 | i2 i3 t1
    assert shards.order(TokenLayout((1, 2, 2)), 4, "cpu") is None  # image only: already in order
    assert SequenceShards(2, 1, False).order(TokenLayout((1, 2, 2), text_len=2), 6, "cpu") is None  # text unsharded
    assert SequenceShards(4, 2, True).heads(8) == slice(4, 6)


def test_masks_and_head_shares_follow_the_ranks():
    gather = torch.tensor([0, 3, 1, 2])
    key_mask = torch.tensor([[[[True, False, True, False]]]])  # (B, 1, 1, N)
    assert in_order(key_mask, gather).tolist() == [[[[True, False, False, True]]]]
    full = torch.arange(16).view(1, 1, 4, 4)  # (B, 1, N, N): queries and keys both reordered
    assert torch.equal(in_order(full, gather), full[:, :, gather][..., gather])
    assert in_order(None, gather) is None
    pattern = torch.arange(8).view(1, 4, 2)  # (B, H, nQ): 4 heads, ranks of 2
    assert own_heads(pattern, SequenceShards(2, 1, True), 4).tolist() == [[[4, 5], [6, 7]]]
    shared = torch.arange(2).view(1, 1, 2)  # one pattern for every head ("window")
    assert own_heads(shared, SequenceShards(2, 1, True), 4) is shared and own_heads(pattern, None, 4) is pattern


@pytest.mark.parametrize("model", ["flux", "wan", "skyreels"])
def test_stock_ulysses_equals_one_process(runs, model):
    assert all(r["stock"] <= TOLERANCE for r in runs[model])


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("model", ["flux", "wan", "skyreels"])
def test_sparse_ulysses_equals_one_process(runs, model, pattern):
    for r in runs[model]:
        assert r[pattern] <= TOLERANCE, (model, pattern, float(r[pattern]))
        assert r[f"{pattern} vs dense"] > SPARSE
    # each rank keeps patterns for its own 2 of the 4 heads ("window": one pattern for every head; "dynamic": none)
    expected = {"cached": [2], "dynamic": [], "window": [1]}[pattern]
    assert all(r[f"{pattern} heads"] == expected for r in runs[model])


def test_family_plan_for_a_model_without_one():
    from diffusers import SkyReelsV2Transformer3DModel, WanTransformer3DModel

    from unbottle.families import parallel_plan

    assert SkyReelsV2Transformer3DModel._cp_plan is None  # diffusers gives none: the family record's
    plan = parallel_plan(SkyReelsV2Transformer3DModel.__new__(SkyReelsV2Transformer3DModel))
    assert set(plan) == {"rope", "blocks.0", "proj_out"} and plan["blocks.0"]["hidden_states"].split_dim == 1
    wan = WanTransformer3DModel.__new__(WanTransformer3DModel)
    assert parallel_plan(wan) is WanTransformer3DModel._cp_plan  # a model's own plan wins
    assert parallel_plan(torch.nn.Linear(1, 1)) is None


def test_family_plan_is_checked():
    from unbottle.families import Family

    with pytest.raises(ValueError, match=r"Family.parallel_plan must be a context-parallel plan .* got 3$"):
        Family("Planned", model_classes=("Planned",), parallel_plan=3)


def test_flux_needs_the_layout_order(runs):
    # attending in the gathered order [text₀, image₀, text₁, image₁] is what made Flux differ
    assert all(r["cached, gathered order"] > SPARSE for r in runs["flux"])


def test_pattern_file_of_one_process_loads_on_two_ranks(runs):
    for r in runs["flux"]:
        assert r["loaded on 2"] == 2 and r["own heads"] and r["computed on 2 from file"] == {}
        assert r["2 from file vs alone"] <= TOLERANCE


def test_pattern_file_of_two_ranks_is_the_one_process_file(runs):
    for r in runs["flux"]:
        assert r["same tensors"] and r["same metadata"]
        assert r["loaded on 1"] == 2 and r["computed on 1 from file"] == {}
        assert r["1 from 2's file vs alone"] <= TOLERANCE


def test_ring_attention_is_refused_before_and_after(runs):
    for r in runs["flux"]:
        for when in ("ring before", "ring after"):
            assert r[when].startswith("ValueError: sparse attention supports context parallelism by Ulysses only")
            assert "ring_degree=2, allowed 1" in r[when] and "ulysses_degree=2" in r[when]
        assert r["ring before untouched"]


def test_ulysses_enabled_after_sparse_attention_is_refused(runs):
    for r in runs["flux"]:
        assert r["ulysses after"].startswith("RuntimeError: the parallelism of this FluxTransformer2DModel changed")
        assert "unbottle.disable_sparse_attention, then unbottle.enable_sparse_attention again" in r["ulysses after"]
        assert r["ulysses after, enabled again"] <= TOLERANCE  # the remedy the message names works
        assert r["drop-in"].startswith("RuntimeError: the drop-in SparseAttnProcessor does not run under context")


def test_heads_ulysses_cannot_split_are_refused(runs):
    for r in runs["flux"]:
        assert r["heads"] == (
            "ValueError: sparse attention under context parallelism: layer 'transformer_blocks.0.attn' has 3 heads, "
            "which ContextParallelConfig ulysses_degree=2 does not divide; allowed ulysses_degree: a divisor of 3 (3)"
        )

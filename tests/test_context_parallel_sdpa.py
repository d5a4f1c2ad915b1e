"""Ulysses context parallelism for families whose attention processors call scaled dot-product attention directly
(SD3, PixArt, CogVideoX): their family plans shard the tokens and unbottle's Ulysses attention exchanges heads for
tokens around each self-attention's SDPA call. Ulysses-2 in two gloo processes (cp_harness.py, one spawn; the checks
are in cp_sdpa_checks.py) equals one process, the plan alone does not; the attention alone also takes sequences the
ranks share unevenly; one process is untouched."""

from __future__ import annotations

import cp_sdpa_checks
import pytest
import torch
from cp_harness import spawn
from cp_sdpa_checks import MODELS, Pipe, forward

from unbottle.attention_processors.ulysses_sdpa import remove_ulysses_attention, ulysses_modules
from unbottle.cli.parallel import World, enable_ulysses
from unbottle.errors import UsageError
from unbottle.families import parallel_plan

TOLERANCE = 1e-5  # fp32, Ulysses-2 vs one process
LOCAL_ONLY = 1e-3  # each rank attending to its own tokens moves the output by more than this
SHAPES = {"SD3": (2, 4, 8, 8), "PixArt": (1, 4, 8, 8), "CogVideoX": (2, 2, 4, 8, 8)}
SELF_ATTENTION = {  # the modules that get unbottle's Ulysses attention: self-attention only, never cross-attention
    "SD3": {"transformer_blocks.0.attn", "transformer_blocks.1.attn"},
    "PixArt": {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"},
    "CogVideoX": {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"},
}


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    return spawn(cp_sdpa_checks.checks)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ulysses_equals_one_process(runs, name):
    for r in runs:
        assert r[name]["ulysses"] <= TOLERANCE, (name, float(r[name]["ulysses"]))
        assert r[name]["shape"] == r[name]["alone shape"] == SHAPES[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_plan_without_the_ulysses_attention_differs(runs, name):
    # the negative control: the same plan, each rank attending to its own tokens only
    for r in runs:
        assert r[name]["without"] > LOCAL_ONLY, (name, float(r[name]["without"]))


@pytest.mark.parametrize(("n", "local"), [(8, (4, 4)), (7, (4, 3)), (11, (6, 5))])
def test_the_attention_alone_equals_one_process_on_even_and_uneven_shares(runs, n, local):
    # uneven shares: diffusers' `ulysses_anything` sharding (tensor_split), which `--parallel` uses on NCCL
    for rank, r in enumerate(runs):
        assert r[f"attention, {n} tokens"] <= TOLERANCE, (n, float(r[f"attention, {n} tokens"]))
        assert r[f"attention shape, {n} tokens"] == (2, 4, local[rank], 8)


def test_a_self_attention_mask_is_refused(runs):
    for r in runs:  # PixArt's image key mask: the sharded self-attention would read it against its local tokens
        assert r["mask"] == (
            "context parallelism: layer 'transformer_blocks.0.attn1' attends with an attention mask, which unbottle's "
            "Ulysses attention does not shard; allowed: self-attention without a mask (pass no attention mask under "
            "parallelism)"
        )


def test_heads_the_ulysses_degree_does_not_divide_are_refused(runs):
    for r in runs:
        assert r["heads"] == (
            "context parallelism: layer 'transformer_blocks.0.attn' of SD3Transformer2DModel has 3 heads, which "
            "ContextParallelConfig ulysses_degree=2 does not divide; allowed ulysses_degree: a divisor of 3 (3)"
        )


def test_sparse_attention_under_ulysses_is_refused_before_any_change(runs):
    for r in runs:
        assert r["sparse"] == (
            "sparse attention under context parallelism (ContextParallelConfig ulysses_degree=2) is not supported on "
            "CogVideoX (CogVideoXTransformer3DModel): its attention processors call scaled dot-product attention "
            "directly and run under unbottle's Ulysses attention, which sparse attention does not compose with; use "
            "sparse attention in one process, or context parallelism without it"
        )
        assert r["sparse left the processors"] == ["CogVideoXAttnProcessor2_0"]
        assert r["after the refusal"] <= TOLERANCE


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_process_is_untouched_and_the_attention_is_removed_cleanly(name):
    build = MODELS[name][0]
    model = build()
    reference = forward(model, name)
    plan = parallel_plan(model)  # readies the Ulysses attention: inert without context parallelism
    assert set(ulysses_modules(model)) == SELF_ATTENTION[name]
    assert parallel_plan(model) == plan and set(ulysses_modules(model)) == SELF_ATTENTION[name]  # idempotent
    assert torch.equal(forward(model, name), reference)
    remove_ulysses_attention(model)
    assert ulysses_modules(model) == {}
    assert torch.equal(forward(model, name), reference)


def test_the_plans_shard_what_each_model_needs():
    from diffusers.models._modeling_parallel import ContextParallelOutput

    sd3 = parallel_plan(MODELS["SD3"][0]())  # text at the model's input, image tokens after the patch embedding
    assert set(sd3) == {"", "pos_embed", "proj_out"} and set(sd3[""]) == {"encoder_hidden_states"}
    assert sd3["pos_embed"][0].split_output and sd3["pos_embed"][0].split_dim == 1
    pixart = parallel_plan(MODELS["PixArt"][0]())  # the text stays whole (cross-attention)
    assert set(pixart) == {"pos_embed", "proj_out"}
    cog = parallel_plan(MODELS["CogVideoX"][0]())  # video, text and RoPE tables sharded; both block outputs gathered
    assert set(cog) == {"transformer_blocks.0", "transformer_blocks.*", "transformer_blocks.1"}
    assert set(cog["transformer_blocks.0"]) == {"hidden_states", "encoder_hidden_states"}
    assert [r.split_dim for r in cog["transformer_blocks.*"]["image_rotary_emb"]] == [0, 0]
    assert [type(g) for g in cog["transformer_blocks.1"]] == [ContextParallelOutput] * 2


def test_the_cli_refuses_heads_the_world_does_not_divide():
    model = MODELS["PixArt"][0]()
    with pytest.raises(UsageError) as e:
        enable_ulysses(Pipe(model), World(3, 0, 0))
    assert str(e.value) == (
        "--parallel: PixArtTransformer2DModel has 2 heads, which 3 processes do not divide (Ulysses gives each rank "
        "an equal share); allowed --nproc-per-node: a divisor of 2 (2)"
    )
    assert model._parallel_config is None

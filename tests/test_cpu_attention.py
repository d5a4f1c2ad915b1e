"""CPU attention routes: dense and block-sparse attention with LSE equal the PyTorch reference on fresh random inputs
(tails, varying and empty rows, broadcast patterns, key masks, padded rows, explicit scale, fp32 and bf16), on both
block-sparse routes (small-tile matmuls and the flash kernel)."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from unbottle.attention_processors import cpu_attention
from unbottle.attention_processors.block_mask import num_blocks, pattern_to_block_mask
from unbottle.attention_processors.block_sparse import (
    block_sparse_attention,
    block_sparse_attention_key_masked,
    dense_attention_with_lse,
)
from unbottle.attention_processors.cpu_attention import block_sparse_attention_cpu, dense_attention_cpu
from unbottle.attention_processors.key_mask import KeyMask
from unbottle.attention_processors.reference import block_sparse_attention_reference, dense_attention_reference

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def qkv(gen, b, h, nq, nk, d, dtype=torch.float32):
    """Fresh random q (B, H, Nq, D), k, v (B, H, Nk, D)."""
    q = torch.randn(b, h, nq, d, generator=gen)
    k, v = (torch.randn(b, h, nk, d, generator=gen) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_pattern(gen, b, h, nqb, nkb, *, empty_rows=()):
    """(indices, counts) with a random count (1..nK) and random distinct blocks per row; padding slots hold random
    block ids; the (batch, head, query block) rows in `empty_rows` keep nothing."""
    indices = torch.randint(0, nkb, (b, h, nqb, nkb), generator=gen, dtype=torch.int32)
    counts = torch.randint(1, nkb + 1, (b, h, nqb), generator=gen, dtype=torch.int32)
    for bi in range(b):
        for hi in range(h):
            for qb in range(nqb):
                c = int(counts[bi, hi, qb])
                indices[bi, hi, qb, :c] = torch.randperm(nkb, generator=gen)[:c].to(torch.int32)
    for row in empty_rows:
        counts[row] = 0
    return indices, counts


def assert_close(out, lse, ref_out, ref_lse, dtype):
    """Relative error of the output (to its largest entry) and of the finite LSEs within TOL; -inf where -inf."""
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    tol = TOL[dtype]
    scale = ref_out.float().abs().max().clamp(min=1e-6)
    assert float((out.float() - ref_out.float()).abs().max() / scale) <= tol
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.equal(lse[~finite], ref_lse[~finite])
    if finite.any():
        err = (lse[finite] - ref_lse[finite]).abs() / ref_lse[finite].abs().clamp(min=1.0)
        assert float(err.max()) <= tol


# -- dense ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2, 37, 37, 16), (2, 3, 64, 50, 32), (3, 1, 5, 130, 8)])
def test_dense_matches_reference(dtype, shape):
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    q, k, v = qkv(gen, *shape, dtype=dtype)
    for scale in (None, 0.37):
        assert_close(*dense_attention_cpu(q, k, v, scale=scale), *dense_attention_reference(q, k, v, scale=scale),
                     dtype)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_masks_match_reference_with_empty_rows(dtype):
    gen = torch.Generator().manual_seed(1)
    b, h, n, d = 2, 3, 41, 16
    q, k, v = qkv(gen, b, h, n, n, d, dtype=dtype)
    keys = torch.rand(b, 1, 1, n, generator=gen) > 0.4
    keys[1] = False  # batch row 1 may attend nothing: output 0, LSE -inf
    additive = torch.randn(b, 1, 1, n, generator=gen).masked_fill(~keys, float("-inf"))
    tokens = torch.arange(n)[None, :] < torch.tensor([[30], [41]])  # (B, N) padded rows
    outer = (tokens[:, None, :, None] & tokens[:, None, None, :])  # (B, 1, N, N)
    per_head = torch.rand(1, h, n, n, generator=gen) > 0.5  # broadcast over the batch, some rows empty
    per_head[0, 1, :5] = False
    for mask in (keys, additive, outer, per_head, keys[0, 0]):
        out, lse = dense_attention_cpu(q, k, v, attn_mask=mask, scale=0.2)
        ref_out, ref_lse = dense_attention_reference(q, k, v, attn_mask=mask, scale=0.2)
        assert_close(out, lse, ref_out, ref_lse, dtype)
    out, lse = dense_attention_cpu(q, k, v, attn_mask=keys)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and bool((lse[1] == float("-inf")).all())


def test_dense_other_value_head_size_runs_the_reference():
    gen = torch.Generator().manual_seed(2)
    q, k, _ = qkv(gen, 1, 2, 20, 20, 16)
    v = torch.randn(1, 2, 20, 8, generator=gen)
    out, lse = dense_attention_cpu(q, k, v)
    ref_out, ref_lse = dense_attention_reference(q, k, v)
    assert out.shape == (1, 2, 20, 8) and torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_dense_with_lse_dispatches_key_masks_on_cpu():
    gen = torch.Generator().manual_seed(3)
    b, h, n, d = 2, 2, 33, 16
    q, k, v = qkv(gen, b, h, n, n, d)
    tokens = torch.arange(n)[None, :] < torch.tensor([[20], [33]])
    outer = tokens[:, None, :, None] & tokens[:, None, None, :]  # (B, 1, N, N): padded rows attend nothing
    out, lse = dense_attention_with_lse(q, k, v, KeyMask(tokens, tokens), scale=0.3)
    assert_close(out, lse, *dense_attention_reference(q, k, v, attn_mask=outer, scale=0.3), torch.float32)
    assert torch.equal(out[0, :, 20:], torch.zeros(h, n - 20, d)) and bool((lse[0, :, 20:] == float("-inf")).all())
    assert_close(*dense_attention_with_lse(q, k, v, tokens[:, None, None, :]),
                 *dense_attention_reference(q, k, v, attn_mask=tokens[:, None, None, :]), torch.float32)  # fmt: skip


# -- block-sparse ---------------------------------------------------------------------------------------------------
CASES = [  # (B, H, Nq, Nk, D, block, pattern batch, pattern heads)
    (1, 2, 64, 64, 16, 16, 1, 2),
    (2, 3, 77, 77, 32, 16, 2, 3),  # tails: 77 = 4·16 + 13
    (2, 3, 50, 50, 8, 8, 1, 3),  # (1, H, …) pattern
    (3, 2, 45, 45, 16, 16, 3, 1),  # (B, 1, …) pattern
    (1, 2, 24, 70, 16, 16, 1, 2),  # fewer queries than keys
]


@pytest.fixture(params=["matmul", "flash"])
def route(request, monkeypatch):
    """Every tile on the small-tile matmul route, or every tile on the flash kernel."""
    monkeypatch.setattr(cpu_attention, "SMALL_TILE", 10**9 if request.param == "matmul" else 0)
    return request.param


def case_inputs(case, dtype, seed, empty_rows=()):
    b, h, nq, nk, d, bs, pb, ph = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(gen, b, h, nq, nk, d, dtype=dtype)
    indices, counts = random_pattern(gen, pb, ph, num_blocks(nq, bs), num_blocks(nk, bs), empty_rows=empty_rows)
    return gen, q, k, v, pattern_to_block_mask(indices, counts, bs, nq, nk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_block_sparse_matches_reference(dtype, case, route):
    _, q, k, v, block_mask = case_inputs(case, dtype, seed=sum(case), empty_rows=[(0, 0, 1)])
    for scale in (None, 0.21):
        out, lse = block_sparse_attention_cpu(q, k, v, block_mask, scale=scale)
        assert_close(out, lse, *block_sparse_attention_reference(q, k, v, block_mask, scale=scale), dtype)
    bs = case[5]
    rows = slice(bs, min(2 * bs, q.shape[2]))  # query block 1 of batch 0, head 0 keeps nothing
    assert torch.equal(out[0, 0, rows], torch.zeros_like(out[0, 0, rows]))
    assert bool((lse[0, 0, rows] == float("-inf")).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[1:4])
def test_block_sparse_key_masks_match_reference(dtype, case, route):
    gen, q, k, v, block_mask = case_inputs(case, dtype, seed=7 + sum(case))
    b, nk = q.shape[0], k.shape[2]
    keys = torch.rand(b, 1, 1, nk, generator=gen) > 0.5
    keys[-1] = False  # the last batch row may attend nothing
    additive = torch.randn(b, 1, 1, nk, generator=gen).masked_fill(~keys, float("-inf"))
    for mask in (keys, additive, keys[:1]):
        out, lse = block_sparse_attention_cpu(q, k, v, block_mask, scale=0.3, attn_mask=mask)
        ref = block_sparse_attention_reference(q, k, v, block_mask, scale=0.3, attn_mask=mask)
        assert_close(out, lse, *ref, dtype)
    out, lse = block_sparse_attention_cpu(q, k, v, block_mask, attn_mask=keys)
    assert torch.equal(out[-1], torch.zeros_like(out[-1])) and bool((lse[-1] == float("-inf")).all())


def test_key_masked_dispatch_with_padded_rows_matches_reference(route):
    gen, q, k, v, block_mask = case_inputs(CASES[1], torch.float32, seed=11)
    n = q.shape[2]
    tokens = torch.arange(n)[None, :] < torch.tensor([[60], [n]])  # (B, N)
    out, lse = block_sparse_attention_key_masked(q, k, v, block_mask, KeyMask(tokens, tokens), scale=0.25)
    outer = tokens[:, None, :, None] & tokens[:, None, None, :]  # (B, 1, N, N)
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, block_mask, scale=0.25, attn_mask=outer)
    assert_close(out, lse, ref_out, ref_lse, torch.float32)
    assert torch.equal(out[0, :, 60:], torch.zeros_like(out[0, :, 60:]))


def test_block_sparse_dispatch_takes_the_fast_route(monkeypatch):
    _, q, k, v, block_mask = case_inputs(CASES[1], torch.float32, seed=12)
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, block_mask)

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(cpu_attention, "block_sparse_attention_reference", refuse)
    out, lse = block_sparse_attention(q, k, v, block_mask)
    assert_close(out, lse, ref_out, ref_lse, torch.float32)


def test_partial_tiles_run_the_reference():
    gen = torch.Generator().manual_seed(13)
    q, k, v = qkv(gen, 1, 2, 40, 40, 16)
    causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, 1, 2, 40, 40, device="cpu", BLOCK_SIZE=16)
    out, lse = block_sparse_attention_cpu(q, k, v, causal)
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, causal)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    tril = torch.ones(40, 40, dtype=torch.bool).tril()
    assert_close(out, lse, *dense_attention_reference(q, k, v, attn_mask=tril), torch.float32)


@pytest.mark.parametrize("block, kept, expected", [(16, 2, "_matmul_attention"), (32, 2, "_matmul_attention"),
                                                   (64, 2, "_flash")])  # fmt: skip
def test_small_tiles_take_the_matmul_route(monkeypatch, block, kept, expected):
    gen = torch.Generator().manual_seed(block)
    q, k, v = qkv(gen, 1, 2, 4 * block, 4 * block, 16)
    indices = torch.stack([torch.randperm(4, generator=gen) for _ in range(8)]).view(1, 2, 4, 4).int()
    block_mask = pattern_to_block_mask(indices, torch.full((1, 2, 4), kept, dtype=torch.int32), block, 4 * block,
                                       4 * block)  # fmt: skip
    taken = []
    for name in ("_matmul_attention", "_flash"):
        real = getattr(cpu_attention, name)
        monkeypatch.setattr(cpu_attention, name, lambda *a, _real=real, _name=name: taken.append(_name) or _real(*a))
    out, lse = block_sparse_attention_cpu(q, k, v, block_mask)
    assert taken and set(taken) == {expected}
    assert_close(out, lse, *block_sparse_attention_reference(q, k, v, block_mask), torch.float32)

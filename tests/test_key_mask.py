"""Padding masks factor into a key vector: exact factoring, and the engine's results equal the full-mask reference."""

import pytest
import torch

from unbottle.attention_processors import block_mask as bm
from unbottle.attention_processors import engine
from unbottle.attention_processors.block_sparse import block_sparse_attention_key_masked, dense_attention_with_lse
from unbottle.attention_processors.config import SparseAttentionConfig
from unbottle.attention_processors.key_mask import factor_key_mask
from unbottle.attention_processors.reference import block_sparse_attention_reference, dense_attention_reference
from unbottle.attention_processors.schedule import StepKind
from unbottle.families.layout import TokenLayout


def token_mask(b: int, n: int, real: list[int]) -> torch.Tensor:
    """(B, N) bool: the first `real[i]` tokens of row i are real (the rest padding)."""
    return torch.arange(n)[None, :] < torch.tensor(real)[:b, None]


def outer(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N) bool: query i may attend key j iff both are real (HunyuanVideo-1.5's text mask)."""
    return tokens[:, None, :, None] & tokens[:, None, None, :]


def test_key_padding_mask_factors_to_its_vector():
    tokens = token_mask(2, 10, [7, 10])
    for mask in (tokens[:, None, None, :], tokens[:, None, :].expand(2, 10, 10)[:, None]):
        km = factor_key_mask(mask, 2, 10, 10)
        assert torch.equal(km.keys, tokens)
        assert km.rows is None or km.rows.all()
    one = factor_key_mask(tokens[:1, None, None, :], 3, 10, 10)  # batch 1 broadcasts
    assert km is not None and one.keys.shape == (3, 10) and torch.equal(one.keys, tokens[:1].expand(3, 10))


def test_outer_product_mask_factors_into_keys_and_rows():
    tokens = token_mask(2, 12, [9, 5])
    km = factor_key_mask(outer(tokens), 2, 12, 12)
    assert torch.equal(km.keys, tokens) and torch.equal(km.rows, tokens)
    assert torch.equal(km.rows[:, :, None] & km.keys[:, None, :], outer(tokens)[:, 0])


def test_additive_key_mask_factors_and_keeps_its_values():
    bias = torch.randn(2, 1, 1, 9)
    km = factor_key_mask(bias, 2, 9, 9)
    assert torch.equal(km.keys, bias[:, 0, 0]) and torch.equal(km.bias(), bias[:, 0, 0])
    keys = token_mask(1, 9, [4])
    expected = torch.zeros(1, 9).masked_fill(~keys, float("-inf"))
    assert torch.equal(factor_key_mask(keys[:, None, None], 1, 9, 9).bias(), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.ones(12, 12, dtype=torch.bool).tril()[None, None],  # causal
        lambda: outer(token_mask(2, 12, [9, 5])).expand(2, 3, 12, 12).clone(),  # per head (H = 3)
        lambda: torch.randn(2, 1, 12, 12),  # additive per query
        lambda: torch.ones(2, 1, 12, 11, dtype=torch.bool),  # not Nk keys
    ],
    ids=["causal", "per_head", "additive_rows", "wrong_keys"],
)
def test_masks_that_do_not_factor_are_left_alone(make):
    assert factor_key_mask(make(), 2, 12, 12) is None


def test_an_outer_product_with_one_entry_changed_does_not_factor():
    mask = outer(token_mask(2, 12, [9, 5]))
    for i, j, value in ((0, 3, False), (10, 2, True), (1, 11, True)):
        changed = mask.clone()
        changed[1, 0, i, j] = value if changed[1, 0, i, j] != value else not value
        assert factor_key_mask(changed, 2, 12, 12) is None, (i, j)


def qkv(seed: int, b=2, h=3, n=40, d=8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen) for _ in range(3)]


def test_dense_with_a_key_mask_equals_the_full_mask_reference():
    q, k, v = qkv(1)
    mask = outer(token_mask(2, 40, [33, 21]))
    out, lse = dense_attention_with_lse(q, k, v, factor_key_mask(mask, 2, 40, 40))
    ref, ref_lse = dense_attention_reference(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    torch.testing.assert_close(lse[torch.isfinite(lse)], ref_lse[torch.isfinite(ref_lse)], atol=1e-5, rtol=1e-5)
    assert (out[1, :, 21:] == 0).all() and (lse[1, :, 21:] == float("-inf")).all()


def test_block_sparse_with_a_key_mask_equals_the_full_mask_reference():
    q, k, v = qkv(2)
    bs, nb = 8, 5
    gen = torch.Generator().manual_seed(3)
    keep = (torch.rand(2, 3, nb, nb, generator=gen) < 0.5) | torch.eye(nb, dtype=torch.bool)
    counts = keep.sum(-1).int()
    indices = keep.float().argsort(dim=-1, descending=True, stable=True).int()  # kept blocks first
    block_mask = bm.pattern_to_block_mask(indices, counts, bs, 40, 40)
    mask = outer(token_mask(2, 40, [37, 18]))
    out, lse = block_sparse_attention_key_masked(q, k, v, block_mask, factor_key_mask(mask, 2, 40, 40))
    ref, ref_lse = block_sparse_attention_reference(q, k, v, block_mask, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))


@pytest.mark.parametrize("kind", [StepKind.REFRESH, StepKind.SPARSE])
@pytest.mark.parametrize("pattern", ["cached", "dynamic", "window"])
def test_engine_with_a_padding_mask_equals_the_unfactored_path(kind, pattern, monkeypatch):
    """The engine factoring a (B, 1, N, N) padding mask gives what it gave through the full-mask reference."""
    q, k, v = qkv(4, n=48)
    mask = outer(token_mask(2, 48, [44, 30]))  # 40 image + 8 text tokens; row 0 pads 4, row 1 18
    cfg = SparseAttentionConfig(density=0.3, block_size=8, pattern=pattern, reshape=True)
    layout = TokenLayout(grid=(1, 5, 8), text_len=8, text_first=False)

    def run():
        state, store = engine.LayerState(), engine.PatternStore()
        patterns = engine.DiTPatterns("layer", cfg, store, layout)
        call = engine.AttentionCall(q, k, v, 8**-0.5, mask)
        first = engine.attend(call, StepKind.REFRESH, state, patterns, cfg)
        return first, engine.attend(call, kind, state, patterns, cfg)

    factored = run()
    monkeypatch.setattr(engine, "factor_key_mask", lambda *a: None)
    full = run()
    for a, b in zip(factored, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (factored[1][1, :, 30:] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA: FlexAttention with the key vector as a bias")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1000, 4133])
def test_cuda_key_masked_attention_matches_the_reference(dtype, n):
    gen = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(2, 4, n, 64, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    tokens = token_mask(2, n, [n - 5, n - 300]).cuda()
    km = factor_key_mask(outer(tokens), 2, n, n)
    nb = -(-n // 128)
    keep = (torch.rand(2, 4, nb, nb, device="cuda", generator=gen) < 0.2) | torch.eye(nb, device="cuda").bool()
    indices = keep.float().argsort(dim=-1, descending=True, stable=True).int()
    block_mask = bm.pattern_to_block_mask(indices, keep.sum(-1).int(), 128, n, n)
    out, lse = block_sparse_attention_key_masked(q, k, v, block_mask, km)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, block_mask, attn_mask=km.as_attn_mask())
    ref = km.zero_empty_rows(ref)
    rel = (out.float() - ref.float()).norm() / ref.float().norm()
    assert rel <= 1e-2
    finite = torch.isfinite(ref_lse) & km.rows[:, None, :]
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=2e-2, rtol=0)
    dense, dense_lse = dense_attention_with_lse(q, k, v, km)
    ref_dense, ref_dense_lse = dense_attention_reference(q, k, v, attn_mask=outer(tokens))
    assert (dense.float() - ref_dense.float()).norm() / ref_dense.float().norm() <= 1e-2
    torch.testing.assert_close(dense_lse[finite], ref_dense_lse[finite], atol=2e-2, rtol=0)

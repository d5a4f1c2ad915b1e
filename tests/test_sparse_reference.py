"""Reference attention: block-sparse attention over a FlexAttention BlockMask equals dense attention with the
equivalent mask, on fresh random inputs (odd lengths, cross lengths, batches, heads, fp32 and bf16)."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask

import unbottle
from unbottle.attention_processors import block_mask as bm
from unbottle.attention_processors import reference

FP32_TOL, BF16_TOL = 1e-5, 1e-2


# -- independent helpers -------------------------------------------------------------------------------------------
def random_kept_lists(gen, b, h, nqb, nkb, *, allow_empty=False, always=()):
    """Per (batch, head, query block) a random, unsorted list of kept key blocks."""
    kept = []
    for _ in range(b):
        heads = []
        for _ in range(h):
            rows = []
            for _ in range(nqb):
                low = 0 if allow_empty else 1
                count = int(torch.randint(low, nkb + 1, (1,), generator=gen))
                blocks = torch.randperm(nkb, generator=gen)[:count].tolist()
                blocks += [a for a in always if a not in blocks]
                rows.append(blocks)
            heads.append(rows)
        kept.append(heads)
    return kept


def lists_to_pattern(gen, kept, nkb):
    """(indices, counts) in the engine's kept-block-list format; padding slots hold random (ignored) block ids."""
    b, h, nqb = len(kept), len(kept[0]), len(kept[0][0])
    indices = torch.randint(0, nkb, (b, h, nqb, nkb), generator=gen, dtype=torch.int32)
    counts = torch.zeros(b, h, nqb, dtype=torch.int32)
    for bi in range(b):
        for hi in range(h):
            for qb, blocks in enumerate(kept[bi][hi]):
                indices[bi, hi, qb, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
                counts[bi, hi, qb] = len(blocks)
    return indices, counts


def lists_to_dense_mask(kept, bs, nq, nk):
    """The boolean token mask the kept lists stand for, built tile by tile."""
    b, h = len(kept), len(kept[0])
    mask = torch.zeros(b, h, nq, nk, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for qb, blocks in enumerate(kept[bi][hi]):
                for kb in blocks:
                    mask[bi, hi, qb * bs : (qb + 1) * bs, kb * bs : (kb + 1) * bs] = True
    return mask


def masked_scores(q, k, mask=None, scale=None, bias=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.double()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s


def assert_rel(actual, expected, tol):
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(expected.abs().max().item(), 1.0), (err, tol)


def qkv(gen, b, h, nq, nk, d, dtype=torch.float32):
    q = torch.randn(b, h, nq, d, generator=gen).to(dtype)
    k = torch.randn(b, h, nk, d, generator=gen).to(dtype)
    v = torch.randn(b, h, nk, d, generator=gen).to(dtype)
    return q, k, v


# (B, H, Nq, Nk, D, block size)
SHAPES = [
    (1, 1, 32, 32, 16, 8),
    (2, 3, 37, 37, 16, 8),  # N not a multiple of the block size
    (2, 2, 24, 41, 8, 8),  # cross length, partial last key block
    (1, 2, 30, 30, 8, 4),
    (3, 1, 5, 19, 4, 4),  # queries shorter than the keys
    (1, 2, 50, 21, 8, 16),  # queries longer than the keys
]


# -- kept-block lists → BlockMask → dense mask -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_dense_block_mask_matches_kept_lists(shape):
    b, h, nq, nk, _, bs = shape
    gen = torch.Generator().manual_seed(sum(shape))
    nqb, nkb = -(-nq // bs), -(-nk // bs)
    kept = random_kept_lists(gen, b, h, nqb, nkb, allow_empty=True)
    mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, kept, nkb), bs, nq, nk)
    assert mask.seq_lengths == (nq, nk)
    assert torch.equal(bm.dense_block_mask(mask), lists_to_dense_mask(kept, bs, nq, nk))


# -- block-sparse reference and public function vs dense attention with the equivalent mask -------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_block_sparse_equals_masked_dense(shape, dtype, seed):
    b, h, nq, nk, d, bs = shape
    gen = torch.Generator().manual_seed(1000 * seed + sum(shape))
    nqb, nkb = -(-nq // bs), -(-nk // bs)
    kept = random_kept_lists(gen, b, h, nqb, nkb)
    block_mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, kept, nkb), bs, nq, nk)
    mask = lists_to_dense_mask(kept, bs, nq, nk)
    assert torch.equal(bm.dense_block_mask(block_mask), mask)
    q, k, v = qkv(gen, b, h, nq, nk, d, dtype)
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL

    expected_bool = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    expected_add = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=additive)
    expected_lse = torch.logsumexp(masked_scores(q, k, mask), dim=-1)

    out_ref, lse_ref = reference.block_sparse_attention_reference(q, k, v, block_mask)
    out_pub, lse_pub = unbottle.block_sparse_attention(q, k, v, block_mask)
    for out, lse in ((out_ref, lse_ref), (out_pub, lse_pub)):
        assert out.dtype == dtype and out.shape == (b, h, nq, d) and lse.shape == (b, h, nq)
        assert_rel(out, expected_bool, tol)
        assert_rel(out, expected_add, tol)
        assert_rel(lse, expected_lse, tol)


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_block_sparse_explicit_scale_and_chunking(scale):
    gen = torch.Generator().manual_seed(7)
    b, h, n, d, bs = 2, 2, 45, 8, 4
    nb = -(-n // bs)
    kept = random_kept_lists(gen, b, h, nb, nb)
    block_mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, kept, nb), bs, n, n)
    q, k, v = qkv(gen, b, h, n, n, d)
    mask = lists_to_dense_mask(kept, bs, n, n)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    expected_lse = torch.logsumexp(masked_scores(q, k, mask, scale), -1)
    for chunk in (1, 3, 16):
        out, lse = reference.block_sparse_attention_reference(q, k, v, block_mask, scale=scale, chunk_blocks=chunk)
        assert_rel(out, expected, FP32_TOL)
        assert_rel(lse, expected_lse, FP32_TOL)
    out = unbottle.block_sparse_attention(q, k, v, block_mask, scale=scale, return_lse=False)
    assert isinstance(out, torch.Tensor)
    assert_rel(out, expected, FP32_TOL)


def test_block_mask_broadcasts_over_batch_and_heads():
    gen = torch.Generator().manual_seed(3)
    b, h, n, d, bs = 3, 4, 40, 8, 8
    nb = n // bs
    kept = random_kept_lists(gen, 1, 1, nb, nb)
    block_mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, kept, nb), bs, n, n)
    q, k, v = qkv(gen, b, h, n, n, d)
    mask = lists_to_dense_mask(kept, bs, n, n)  # (1, 1, N, N)
    out, lse = unbottle.block_sparse_attention(q, k, v, block_mask)
    assert_rel(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), FP32_TOL)
    assert_rel(lse, torch.logsumexp(masked_scores(q, k, mask), -1), FP32_TOL)


def test_rows_without_kept_blocks_give_zero_output_and_minus_inf_lse():
    gen = torch.Generator().manual_seed(4)
    b, h, n, d, bs = 1, 2, 24, 8, 8
    kept = [[[[0, 2], [], [1]], [[], [0], [0, 1, 2]]]]
    block_mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, kept, 3), bs, n, n)
    q, k, v = qkv(gen, b, h, n, n, d)
    out, lse = reference.block_sparse_attention_reference(q, k, v, block_mask)
    empty = ~lists_to_dense_mask(kept, bs, n, n).any(-1)  # (B, H, N)
    assert empty.sum() == 16
    assert torch.all(out[empty] == 0) and torch.all(lse[empty] == float("-inf"))
    assert torch.isfinite(out).all() and torch.isfinite(lse[~empty]).all()
    mask = lists_to_dense_mask(kept, bs, n, n)
    expected = torch.softmax(masked_scores(q, k, mask), -1).nan_to_num(0.0) @ v.double()
    assert_rel(out, expected, FP32_TOL)


# -- BlockMasks made by torch's own create_block_mask (partial tiles use the mask_mod per element) ------------------
def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _sliding(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() <= 5


def _prefix_window(b, h, q_idx, kv_idx):  # cross length: every query sees the first 16 keys plus its own position
    return (kv_idx < 16) | (kv_idx == q_idx + 16)


def _head_dependent(b, h, q_idx, kv_idx):  # head 0 causal, head 1 anti-causal
    return torch.where(h == 0, q_idx >= kv_idx, q_idx <= kv_idx)


@pytest.mark.parametrize(
    ("mask_mod", "b", "h", "nq", "nk", "bs"),
    [
        (_causal, None, None, 37, 37, 8),
        (_sliding, None, None, 45, 45, 8),
        (_sliding, None, None, 32, 32, 4),
        (_prefix_window, None, None, 21, 44, 8),
        (_head_dependent, None, 2, 30, 30, 8),
    ],
    ids=["causal", "sliding-odd", "sliding-bs4", "cross-length", "per-head"],
)
def test_torch_create_block_mask_is_honoured(mask_mod, b, h, nq, nk, bs):
    gen = torch.Generator().manual_seed(nq * nk)
    block_mask = create_block_mask(mask_mod, b, h, nq, nk, device="cpu", BLOCK_SIZE=bs)
    assert int(block_mask.kv_num_blocks.sum()) > 0  # the mask has partial tiles: the mask_mod must run per element
    bb, hh = 2, h or 2
    bi = torch.arange(bb).view(bb, 1, 1, 1)
    hi = torch.arange(hh).view(1, hh, 1, 1)
    qi = torch.arange(nq).view(1, 1, nq, 1)
    ki = torch.arange(nk).view(1, 1, 1, nk)
    mask = mask_mod(bi, hi, qi, ki).expand(bb, hh, nq, nk)  # evaluated directly, element by element
    assert torch.equal(bm.dense_block_mask(block_mask).expand(bb, hh, nq, nk), mask)
    q, k, v = qkv(gen, bb, hh, nq, nk, 8)
    out, lse = unbottle.block_sparse_attention(q, k, v, block_mask)
    assert_rel(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), FP32_TOL)
    assert_rel(lse, torch.logsumexp(masked_scores(q, k, mask), -1), FP32_TOL)


def test_index_based_mask_mod_with_partial_last_block():
    n, bs = 20, 8
    doc = torch.tensor([0] * 7 + [1] * 9 + [2] * 4)

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    block_mask = create_block_mask(document, None, None, n, n, device="cpu", BLOCK_SIZE=bs)
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, 1, 2, n, n, 8)
    mask = (doc[:, None] == doc[None, :]).expand(1, 2, n, n)
    out, _ = unbottle.block_sparse_attention(q, k, v, block_mask)
    assert_rel(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), FP32_TOL)


# -- an extra attn_mask (key padding, additive bias, per-query mask) on top of the block pattern ----------------------
@pytest.mark.parametrize("shape", [(2, 2, 37, 37, 8, 8), (2, 3, 24, 41, 8, 8), (1, 1, 30, 30, 4, 4)])
@pytest.mark.parametrize("kind", ["key_padding_bool", "key_padding_additive", "bias", "per_query_bool"])
def test_block_sparse_reference_with_attn_mask(shape, kind):
    b, h, nq, nk, d, bs = shape
    gen = torch.Generator().manual_seed(sum(shape) + len(kind))
    nqb, nkb = -(-nq // bs), -(-nk // bs)
    kept = random_kept_lists(gen, b, h, nqb, nkb, always=(0,))  # key 0 stays visible in every row
    block_mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, kept, nkb), bs, nq, nk)
    blocks = lists_to_dense_mask(kept, bs, nq, nk)
    q, k, v = qkv(gen, b, h, nq, nk, d)
    bias = None
    if kind.startswith("key_padding"):
        valid = torch.arange(nk)[None, :] < torch.tensor([nk - 3, nk - 11])[:b, None]  # (B, Nk): padded tails
        attn_mask = valid[:, None, None, :]  # (B, 1, 1, Nk)
        full = blocks & attn_mask
        if kind.endswith("additive"):
            attn_mask = torch.zeros(attn_mask.shape).masked_fill(~attn_mask, float("-inf"))
    elif kind == "bias":
        attn_mask = torch.randn(b, h, nq, nk, generator=gen)
        bias, full = attn_mask, blocks
    else:
        attn_mask = torch.rand(b, 1, nq, nk, generator=gen) < 0.6
        attn_mask[..., 0] = True
        full = blocks & attn_mask
    out, lse = reference.block_sparse_attention_reference(q, k, v, block_mask, attn_mask=attn_mask)
    additive = torch.zeros(full.shape).masked_fill(~full, float("-inf")) + (0 if bias is None else bias)
    assert_rel(out, F.scaled_dot_product_attention(q, k, v, attn_mask=additive), FP32_TOL)
    assert_rel(lse, torch.logsumexp(masked_scores(q, k, full, bias=bias), -1), FP32_TOL)


# -- dense reference vs torch SDPA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("b", "h", "nq", "nk", "d", "mask_kind", "scale", "chunk"),
    [
        (1, 1, 16, 16, 8, None, None, 1024),
        (2, 3, 37, 37, 16, None, None, 7),
        (2, 2, 20, 33, 8, "bool", None, 6),
        (2, 2, 33, 33, 8, "float", 0.2, 1024),
        (1, 2, 25, 25, 8, "key", None, 4),
    ],
)  # fmt: skip
def test_dense_reference_matches_sdpa(b, h, nq, nk, d, mask_kind, scale, chunk, dtype):
    gen = torch.Generator().manual_seed(nq + nk + d)
    q, k, v = qkv(gen, b, h, nq, nk, d, dtype)
    mask = bias = None
    if mask_kind == "bool":
        mask = torch.rand(b, 1, nq, nk, generator=gen) < 0.5
        mask[..., -1] = True
    elif mask_kind == "float":
        mask = bias = torch.randn(b, h, nq, nk, generator=gen)
    elif mask_kind == "key":
        mask = torch.arange(nk).view(1, 1, 1, nk) < 17
    out, lse = reference.dense_attention_reference(q, k, v, attn_mask=mask, scale=scale, chunk=chunk)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale)
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    assert out.dtype == dtype
    assert_rel(out, expected, tol)
    bool_mask = mask if mask is not None and mask.dtype == torch.bool else None
    assert_rel(lse, torch.logsumexp(masked_scores(q, k, bool_mask, scale, bias), -1), tol)


# -- argument checks -------------------------------------------------------------------------------------------------
def test_block_sparse_attention_rejects_mismatched_inputs():
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, 1, 2, 16, 16, 8)
    block_mask = bm.pattern_to_block_mask(*lists_to_pattern(gen, [[[[0], [1]]]], 2), 8, 16, 16)
    with pytest.raises(ValueError, match="B, H, N, D"):
        unbottle.block_sparse_attention(q[0], k[0], v[0], block_mask)
    with pytest.raises(ValueError, match="block_mask"):
        unbottle.block_sparse_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], block_mask)
    with pytest.raises(ValueError, match="shapes"):
        unbottle.block_sparse_attention(q, k[:, :1], v[:, :1], block_mask)

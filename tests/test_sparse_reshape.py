"""Re-ttention reshape (ρ, R) and the engine's per-layer schedule, driven step by step on synthetic q/k/v."""

import contextlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from unbottle import SparseAttentionConfig
from unbottle.attention_processors import block_mask as bm
from unbottle.attention_processors import engine, processor, reference, reshape
from unbottle.attention_processors.engine import PatternStore
from unbottle.attention_processors.layout import TokenLayout
from unbottle.attention_processors.state import CURRENT_FORWARD, ForwardInfo, LayerStateHook

TOL = 1e-5
GRID = TokenLayout((1, 8, 8))  # 64 tokens; block size 8 = one grid row per block


def assert_rel(actual, expected, tol=TOL):
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(expected.abs().max().item(), 1.0), (err, tol)


def rel_err(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def make_layer(**cfg):
    return processor.SparseLayer("layer", SparseAttentionConfig(**cfg), LayerStateHook(), PatternStore())


@contextlib.contextmanager
def forward(step, num_steps=20, layout=GRID):
    info = ForwardInfo(step, num_steps, float(1000 - step), 1000.0, None, layout)
    token = CURRENT_FORWARD.set(info)
    try:
        yield
    finally:
        CURRENT_FORWARD.reset(token)


def attend(layer, step, q, k, v, layout=GRID, num_steps=20, attn_mask=None):
    with forward(step, num_steps, layout):
        return layer.attend(q, k, v, attn_mask=attn_mask)


def exact(q, k, v, attn_mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def random_qkv(seed, b=2, h=2, n=64, d=16):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen) for _ in range(3))


def stored_block_mask(layer, n, kv=None):
    (indices, counts), = [p for key, p in layer.store.patterns.items() if key[1] == n]  # fmt: skip
    return bm.pattern_to_block_mask(indices, counts, layer.config.block_size, n, kv or n)


# -- capture_statistics / apply_reshape ------------------------------------------------------------------------------
def _pattern_case(seed, b=2, h=3, n=40, d=8, bs=8):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    nb = math.ceil(n / bs)
    keep = torch.rand(b, h, nb, nb, generator=gen) < 0.4
    keep |= torch.eye(nb, dtype=torch.bool)
    keep[0, 0, 1] = True  # one row keeps everything: nothing to correct there
    counts = keep.sum(-1).to(torch.int32)
    indices = torch.argsort((~keep).int(), dim=-1, stable=True).to(torch.int32)  # kept blocks first
    block_mask = bm.pattern_to_block_mask(indices, counts, bs, n, n)
    dense = keep.repeat_interleave(bs, 2).repeat_interleave(bs, 3)[:, :, :n, :n]
    return q, k, v, block_mask, dense


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_reconstruct_full_output(seed):
    q, k, v, block_mask, dense = _pattern_case(seed)
    out_full, lse_full = reference.dense_attention_reference(q, k, v)
    out_sparse, lse_sparse = reference.block_sparse_attention_reference(q, k, v, block_mask)
    rho, residual = reshape.capture_statistics(out_full, lse_full, out_sparse, lse_sparse)
    assert rho.shape == (*q.shape[:3], 1) and rho.dtype == torch.float32 and residual.shape == q.shape

    # ρ is each row's softmax mass inside the pattern
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
    assert_rel(rho[..., 0], (p * dense).sum(-1))
    assert torch.all(rho > 0) and torch.all(rho <= 1 + 1e-6)
    assert_rel(rho[0, 0, 8:16, 0], torch.ones(8))  # the row that keeps every block
    assert_rel(residual[0, 0, 8:16], torch.zeros(8, q.shape[-1]))

    # at the step the statistics were taken, ρ·O_sparse + R is the full output (with any growth at k = 0)
    for growth in (0.0, 0.04, 0.5):
        assert_rel(reshape.apply_reshape(out_sparse, rho, residual, growth, 0), exact(q, k, v))


@pytest.mark.parametrize(("growth", "k"), [(0.04, 1), (0.04, 3), (0.25, 2), (0.0, 5)])
def test_rho_grows_linearly_with_sparse_steps_since_refresh(growth, k):
    q, k_, v, block_mask, _ = _pattern_case(3)
    out_full, lse_full = reference.dense_attention_reference(q, k_, v)
    out_sparse, lse_sparse = reference.block_sparse_attention_reference(q, k_, v, block_mask)
    rho, residual = reshape.capture_statistics(out_full, lse_full, out_sparse, lse_sparse)
    # (ρ + g·k)·O_sparse + R = O_full + g·k·O_sparse
    assert_rel(reshape.apply_reshape(out_sparse, rho, residual, growth, k), out_full + growth * k * out_sparse)


def test_reshape_keeps_dtypes():
    q, k, v, block_mask, _ = _pattern_case(4)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out_full, lse_full = reference.dense_attention_reference(q, k, v)
    out_sparse, lse_sparse = reference.block_sparse_attention_reference(q, k, v, block_mask)
    rho, residual = reshape.capture_statistics(out_full, lse_full, out_sparse, lse_sparse)
    assert rho.dtype == torch.float32 and residual.dtype == torch.bfloat16
    out = reshape.apply_reshape(out_sparse, rho, residual, 0.0, 0)
    assert out.dtype == torch.bfloat16
    assert_rel(out, exact(q.float(), k.float(), v.float()), 2e-2)


# -- through the engine: a frozen pattern and unchanged inputs reproduce the full output ----------------------------
@pytest.mark.parametrize("pattern", ["cached", "window", "dynamic"])
def test_layer_sparse_steps_reproduce_full_output_on_unchanged_inputs(pattern):
    q, k, v = random_qkv(0)
    full = exact(q, k, v)
    layer = make_layer(density=0.25, block_size=8, pattern=pattern, full_steps=1, refresh_every=0, rho_growth=0.0)
    naive = make_layer(density=0.25, block_size=8, pattern=pattern, full_steps=1, reshape=False)
    for step in range(5):
        out = attend(layer, step, q, k, v)
        assert out is not None
        assert_rel(out, full)
        naive_out = attend(naive, step, q, k, v)
        if step >= 1:  # the sparse path really runs: without the reshape it is visibly off
            assert naive_out is not None and rel_err(naive_out, full) > 1e-2
    if pattern != "dynamic":
        block_mask = stored_block_mask(naive, 64)
        assert_rel(naive_out, reference.block_sparse_attention_reference(q, k, v, block_mask)[0])


def test_layer_rho_growth_schedule():
    # full_steps=1, refresh after every 3 sparse steps: R S S S R S S S R; the k-th sparse step uses ρ + g·k
    growth = 0.1
    q, k, v = random_qkv(1)
    full = exact(q, k, v)
    layer = make_layer(density=0.25, block_size=8, pattern="window", full_steps=1, refresh_every=3, rho_growth=growth)
    expected_k = [None, 0, 1, 2, None, 0, 1, 2, None, 0]
    outs = [attend(layer, step, q, k, v) for step in range(len(expected_k))]
    out_sparse = reference.block_sparse_attention_reference(q, k, v, stored_block_mask(layer, 64))[0]
    for step, (out, kk) in enumerate(zip(outs, expected_k, strict=True)):
        if kk is None:  # refresh: exact
            assert_rel(out, full)
        else:
            assert_rel(out, full + growth * kk * out_sparse)
            if kk:
                assert rel_err(out, full) > 1e-3, step  # growth visibly applied


def test_new_token_count_captures_new_statistics_instead_of_reusing_stale_ones():
    layer = make_layer(density=0.25, block_size=8, pattern="window", full_steps=1, refresh_every=0, rho_growth=0.0)
    q, k, v = random_qkv(2)
    attend(layer, 0, q, k, v)
    attend(layer, 1, q, k, v)
    # a sparse step at another resolution: no statistics for it yet, so this step must be exact
    q2, k2, v2 = random_qkv(3, n=72)
    assert_rel(attend(layer, 2, q2, k2, v2, layout=TokenLayout((1, 9, 8))), exact(q2, k2, v2))
    assert_rel(attend(layer, 3, q2, k2, v2, layout=TokenLayout((1, 9, 8))), exact(q2, k2, v2))
    assert sorted(key[1] for key in layer.store.patterns) == [64, 72]


# -- reshape beats plain sparse attention when attention is local and inputs drift a little -------------------------
def _local_qkv(seed, coords, d=32, sigma=0.5, peak=5.0, b=1, h=2):
    """q = k = random Fourier features of the token coordinates: the logits are ≈ peak·exp(-σ²|x_i - x_j|²/2)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(h, coords.shape[-1], d // 2, generator=gen) * sigma
    phase = coords[None] @ w  # (H, N, d/2)
    feats = torch.cat([phase.cos(), phase.sin()], -1) * (2 * peak / d**0.5) ** 0.5
    q = feats[None].expand(b, h, -1, -1).contiguous()
    v = torch.randn(b, h, coords.shape[0], d, generator=gen)
    return q, q.clone(), v


def _perturb(x, seed, eps):
    gen = torch.Generator().manual_seed(seed)
    return x + eps * x.std() * torch.randn(x.shape, generator=gen)


@pytest.mark.parametrize(
    ("layout", "n", "bs", "density"),
    [
        (TokenLayout((1, 16, 16)), 256, 16, 3 / 16),  # 2-D grid, a block is a grid row, keep 3 rows
        (TokenLayout(), 128, 8, 3 / 16),  # 1-D sequence, scores decay with |i - j|
    ],
    ids=["grid", "sequence"],
)
def test_reshape_error_below_naive_sparse_error_on_later_step(layout, n, bs, density):
    (f, hh, ww), _, _ = layout.resolve(n)
    coords = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(hh), torch.arange(ww), indexing="ij"), -1)
    coords = coords.reshape(-1, 3).float()
    q0, k0, v0 = _local_qkv(0, coords)
    reshaped = make_layer(density=density, block_size=bs, pattern="window", full_steps=1, refresh_every=0)
    naive = make_layer(density=density, block_size=bs, pattern="window", full_steps=1, reshape=False)
    attend(reshaped, 0, q0, k0, v0, layout=layout)  # refresh: statistics from exact attention
    assert attend(naive, 0, q0, k0, v0, layout=layout) is None  # dense step

    # the inputs are local but not block-local: the window pattern misses a real part of the mass
    p = torch.softmax(q0 @ k0.transpose(-1, -2) * q0.shape[-1] ** -0.5, -1)
    inside = bm.dense_block_mask(stored_block_mask(reshaped, n))
    mass = (p * inside).sum(-1).mean().item()
    assert 0.5 < mass < 0.9, mass

    for step, eps in ((1, 0.02), (2, 0.05), (3, 0.1)):
        q, k, v = _perturb(q0, 10 * step, eps), _perturb(k0, 10 * step + 1, eps), _perturb(v0, 10 * step + 2, eps)
        truth = exact(q, k, v)
        err_reshape = rel_err(attend(reshaped, step, q, k, v, layout=layout), truth)
        err_naive = rel_err(attend(naive, step, q, k, v, layout=layout), truth)
        assert err_reshape < 0.5 * err_naive, (step, err_reshape, err_naive)


# -- schedule as seen through the layer: dense steps come back as None (stock SDPA) or exact -------------------------
def _observed_kinds(layer, steps, num_steps=20, seed=0):
    kinds = []
    for step in range(steps):
        q, k, v = random_qkv(100 * seed + step)  # fresh inputs: a reshaped sparse step cannot be exact
        out = attend(layer, step, q, k, v, num_steps=num_steps)
        if out is None:
            kinds.append("D")
        elif rel_err(out, exact(q, k, v)) < TOL:
            kinds.append("R")
        else:
            kinds.append("S")
    return kinds


@pytest.mark.parametrize(
    ("cfg", "num_steps", "expected"),
    [
        (dict(full_steps=3, refresh_every=2), 20, "DDRSSRSSR"),
        (dict(full_steps=1, refresh_every=0), 20, "RSSSSS"),
        (dict(full_steps=0, refresh_every=0), 20, "RSSS"),  # statistics need one exact step
        (dict(full_steps=0.5, refresh_every=0), 4, "DRSS"),  # a fraction of the known number of steps
        (dict(full_steps=0.25, refresh_every=1), 8, "DRSRSRSR"),
        (dict(full_steps=2, reshape=False), 20, "DDSSSS"),
        (dict(full_steps=0, reshape=False), 20, "SSSS"),
        (dict(full_steps=2, density=1.0), 20, "DDDDDD"),  # density 1: always the stock attention
    ],
)  # fmt: skip
def test_first_full_steps_are_exact(cfg, num_steps, expected):
    layer = make_layer(**{"density": 0.25, "block_size": 8, **cfg})
    assert "".join(_observed_kinds(layer, len(expected), num_steps)) == expected


def test_without_a_denoiser_steps_are_counted_by_calls():
    # attention called outside any supported model (no clock to attach): the layer counts its own calls as steps
    layer = make_layer(density=0.25, block_size=8, full_steps=2, refresh_every=0)
    kinds = []
    for step in range(5):
        q, k, v = random_qkv(step)
        out = layer.attend(q, k, v)
        kinds.append("D" if out is None else "R" if rel_err(out, exact(q, k, v)) < TOL else "S")
    assert "".join(kinds) == "DRSSS"


def test_fraction_without_step_count_warns_once():
    layer = make_layer(density=0.25, block_size=8, full_steps=0.2)
    q, k, v = random_qkv(0)
    with pytest.warns(UserWarning, match="full_steps"):
        layer.attend(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.attend(q, k, v)


def test_single_block_sequence_is_left_to_dense():
    layer = make_layer(density=0.25, block_size=8, full_steps=0, reshape=False)
    q, k, v = random_qkv(0, n=8)
    assert attend(layer, 3, q, k, v, layout=TokenLayout()) is None


# -- pattern computation: cached once, dynamic every step ------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "per_step"), [("cached", False), ("window", False), ("dynamic", True)])
def test_pattern_computed_once_or_every_step(monkeypatch, pattern, per_step):
    calls = {"pooled": 0, "importance": 0}
    pooled, importance = engine.pooled_scores, engine.exact_block_importance

    def counting_pooled(*args, **kwargs):
        calls["pooled"] += 1
        return pooled(*args, **kwargs)

    def counting_importance(*args, **kwargs):
        calls["importance"] += 1
        return importance(*args, **kwargs)

    monkeypatch.setattr(engine, "pooled_scores", counting_pooled)
    monkeypatch.setattr(engine, "exact_block_importance", counting_importance)
    layer = make_layer(density=0.25, block_size=8, pattern=pattern, full_steps=1, reshape=False)
    for step in range(6):  # step 0 dense, steps 1–5 sparse
        attend(layer, step, *random_qkv(step))
    if per_step:
        assert calls == {"pooled": 5, "importance": 0}
        assert layer.store.patterns == {} and layer.store.computed == {}
    else:
        assert calls == {"pooled": 0, "importance": 1 if pattern == "cached" else 0}
        assert layer.store.computed == {"layer": 1} and len(layer.store.patterns) == 1


def test_dynamic_pattern_follows_the_inputs():
    layer = make_layer(density=0.25, block_size=8, pattern="dynamic", full_steps=0, reshape=False)
    q, k, v = random_qkv(0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    out1 = attend(layer, 0, q, k, v)
    out2 = attend(layer, 1, q, k[:, :, perm], v[:, :, perm])  # keys moved: a different pattern, same attention...
    full = exact(q, k, v)
    assert rel_err(out1, full) > 1e-3  # ...but sparse, and each step's own top blocks
    for out, kk, vv in ((out1, k, v), (out2, k[:, :, perm], v[:, :, perm])):
        scores = engine.pooled_scores(q, kk, 8, 0.25)
        indices, counts = engine.select_blocks(scores, engine.forced_blocks(GRID, 64, 8, "cpu"), 0.25)
        block_mask = bm.pattern_to_block_mask(indices, counts, 8, 64, 64)
        assert_rel(out, reference.block_sparse_attention_reference(q, kk, vv, block_mask)[0])


# -- an attention mask reaches both the exact and the sparse path ----------------------------------------------------
def test_key_padding_mask_is_honoured_on_every_step():
    q, k, v = random_qkv(5)
    mask = (torch.arange(64) < torch.tensor([[60], [45]]))[:, None, None, :]  # (B, 1, 1, N)
    layer = make_layer(density=0.25, block_size=8, pattern="window", full_steps=1, refresh_every=0, rho_growth=0.0)
    naive = make_layer(density=0.25, block_size=8, pattern="window", full_steps=1, reshape=False)
    assert_rel(attend(layer, 0, q, k, v, attn_mask=mask), exact(q, k, v, mask))
    assert_rel(attend(layer, 1, q, k, v, attn_mask=mask), exact(q, k, v, mask))  # reshape: exact again
    attend(naive, 0, q, k, v, attn_mask=mask)
    out = attend(naive, 1, q, k, v, attn_mask=mask)
    allowed = bm.dense_block_mask(stored_block_mask(naive, 64)) & mask
    assert_rel(out, exact(q, k, v, allowed))

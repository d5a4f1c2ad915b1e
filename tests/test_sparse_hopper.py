"""The packaged Hopper block-sparse kernels (the `hopper` extra: cuDNN frontend BSA and FlashAttention-4) against
the PyTorch reference on fresh random inputs: fp16/bf16, sequence tails, query and key lengths that differ, LSE, rows
with no kept block, 64- and 128-token blocks. GPU only (skipped where CUDA or the package is missing); the measured
choice between them, and FlashAttention-4's list order, are tested on the CPU (test_sparse_backends.py)."""

from __future__ import annotations

import pytest
import torch

from unbottle.attention_processors import backend_choice
from unbottle.attention_processors.block_mask import num_blocks, pattern_to_block_mask
from unbottle.attention_processors.kernels import cudnn_bsa, flash4
from unbottle.attention_processors.reference import block_sparse_attention_reference

CUDA = torch.cuda.is_available()
HOPPER = CUDA and torch.cuda.get_device_capability()[0] >= 9
BACKENDS = {
    "cudnn_bsa": (cudnn_bsa.block_sparse_attention_cudnn, cudnn_bsa.available, (64, 128)),
    "fa4": (flash4.block_sparse_attention_flash4, flash4.available, (128,)),
}
# (batch, heads, query length, key length, head size): aligned, tails, cross lengths, head size 64
SHAPES = [(1, 4, 1024, 1024, 128), (2, 3, 1000, 1000, 128), (1, 2, 640, 1100, 128), (1, 4, 768, 768, 64)]


def _pattern(b, h, nq, nk, bs, density, seed, empty_rows=True):
    """Random kept blocks per (batch, head, query block); some rows keep nothing when `empty_rows`."""
    g = torch.Generator().manual_seed(seed)
    nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
    keep = max(1, round(density * nkb))
    indices = torch.stack([torch.randperm(nkb, generator=g) for _ in range(b * h * nqb)]).view(b, h, nqb, nkb)
    counts = torch.randint(1, keep + 1, (b, h, nqb), generator=g)
    if empty_rows:
        counts[0, 0, 0] = 0
        counts[-1, -1, -1] = 0
    return indices.to(torch.int32).cuda(), counts.to(torch.int32).cuda()


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper-class GPU")
@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_backend_matches_the_reference(name, dtype, shape):
    fn, available, block_sizes = BACKENDS[name]
    if not available():
        pytest.skip(f"{name}: package not installed")
    b, h, nq, nk, d = shape
    for bs in block_sizes:
        if bs == 64 and nq % 64:
            continue  # refused by name (test below)
        torch.manual_seed(hash((name, shape, bs)) % 2**31)
        q = torch.randn(b, nq, h, d, device="cuda", dtype=dtype).transpose(1, 2)  # (B, H, N, D), diffusers' layout
        k = torch.randn(b, nk, h, d, device="cuda", dtype=dtype).transpose(1, 2)
        v = torch.randn(b, nk, h, d, device="cuda", dtype=dtype).transpose(1, 2)
        indices, counts = _pattern(b, h, nq, nk, bs, 0.3, seed=bs)
        mask = pattern_to_block_mask(indices, counts, bs, nq, nk)
        out, lse = fn(q, k, v, mask, None)
        ref, ref_lse = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
        assert out.shape == ref.shape and lse.shape == ref_lse.shape and lse.dtype == torch.float32
        rel = float((out.float() - ref).norm() / ref.norm())
        assert rel <= 1e-2, f"{name} {dtype} {shape} block {bs}: relative error {rel}"
        empty = torch.isneginf(ref_lse)
        assert torch.equal(torch.isneginf(lse), empty), f"{name}: rows with no kept block must give LSE -inf"
        assert float(out[empty.unsqueeze(-1).expand_as(out)].abs().max()) == 0.0
        torch.testing.assert_close(lse[~empty], ref_lse[~empty], atol=2e-2, rtol=0)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper-class GPU")
def test_refusals_name_the_limit():
    q = torch.randn(1, 2, 1000, 80, device="cuda", dtype=torch.bfloat16)
    mask = pattern_to_block_mask(*_pattern(1, 2, 1000, 1000, 64, 0.3, 0), 64, 1000, 1000)
    assert "head sizes are (64, 96, 128)" in cudnn_bsa.refusal(q, q, q, mask)
    q128 = torch.randn(1, 2, 1000, 128, device="cuda", dtype=torch.bfloat16)
    assert "multiple of 64" in cudnn_bsa.refusal(q128, q128, q128, mask)
    assert "128 × 128" in flash4.refusal(q128, q128, q128, mask)
    assert "float16/bfloat16" in cudnn_bsa.refusal(q128.float(), q128.float(), q128.float(), mask)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper-class GPU")
def test_measured_choice_runs_a_correct_backend(tmp_path, monkeypatch):
    if not backend_choice.hopper_installed():
        pytest.skip("no hopper package installed")
    monkeypatch.setenv("UNBOTTLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(backend_choice, "_chooser", None)
    from unbottle.attention_processors.block_sparse import block_sparse_attention

    b, h, n, d = 1, 4, 4096, 128
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = pattern_to_block_mask(*_pattern(b, h, n, n, 128, 0.2, 1, empty_rows=False), 128, n, n)
    out, lse = block_sparse_attention(q, k, v, mask)
    ref, ref_lse = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
    assert float((out.float() - ref).norm() / ref.norm()) <= 1e-2
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=0)
    chooser = backend_choice.chooser()
    entry = next(iter(chooser.entries.values()))
    assert entry["order"] and set(entry["order"]) <= set(chooser.backends)
    assert (tmp_path / backend_choice.CACHE_FILE).exists()

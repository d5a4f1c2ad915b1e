"""GPU paths of sparse attention against the PyTorch reference (skipped without CUDA; run on the device machine).

Fresh random inputs each test; bf16/fp16 relative error ≤ 1e-2 against the fp32 reference on upcast inputs.
"""

import pytest
import torch

import unbottle
from unbottle.attention_processors import block_sparse
from unbottle.attention_processors.block_mask import pattern_to_block_mask
from unbottle.attention_processors.reference import block_sparse_attention_reference, dense_attention_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def random_mask(b, h, n_q, n_kv, density, bs=128, generator=None):
    nq, nk = -(-n_q // bs), -(-n_kv // bs)
    keep = max(1, round(density * nk))
    idx = torch.rand(b, h, nq, nk, device="cuda", generator=generator).argsort(-1)[..., :keep].int()
    counts = torch.randint(1, keep + 1, (b, h, nq), device="cuda", generator=generator, dtype=torch.int32)
    return pattern_to_block_mask(idx, counts, bs, n_q, n_kv)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n_q", "n_kv", "density"), [(1000, 1000, 1.0), (1000, 1000, 0.25), (4608, 4608, 0.05),
                                                      (640, 1200, 0.5)])  # fmt: skip
def test_flex_block_sparse_matches_reference(dtype, n_q, n_kv, density):
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % 2**31)
    q = torch.randn(2, 4, n_q, 128, device="cuda", dtype=dtype, generator=gen)
    k, v = (torch.randn(2, 4, n_kv, 128, device="cuda", dtype=dtype, generator=gen) for _ in range(2))
    mask = random_mask(2, 4, n_q, n_kv, density, generator=gen)
    out, lse = unbottle.block_sparse_attention(q, k, v, mask)
    ref, ref_lse = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-2
    assert float((lse - ref_lse).abs().max()) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_with_lse_matches_reference(dtype):
    q, k, v = (torch.randn(1, 6, 2000, 64, device="cuda", dtype=dtype) for _ in range(3))
    out, lse = block_sparse.dense_attention_with_lse(q, k, v)
    ref, ref_lse = dense_attention_reference(q.float(), k.float(), v.float())
    assert rel_err(out, ref) <= 1e-2 and float((lse - ref_lse).abs().max()) < 2e-2


def test_tiny_flux_on_cuda_density_one_exact_and_sparse_runs_on_flex():
    from unbottle.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(device="cuda", dtype=torch.bfloat16)  # head size 16: FlexAttention compiles it

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe("a red circle left of a blue square", height=64, width=64, num_inference_steps=4,
                    max_sequence_length=16, output_type="pt", generator=generator).images  # fmt: skip

    stock = run()
    unbottle.enable_sparse_attention(pipe, unbottle.SparseAttentionConfig(density=1.0, block_size=128))
    assert torch.equal(run(), stock)
    unbottle.disable_sparse_attention(pipe)
    cfg = unbottle.SparseAttentionConfig(density=0.3, block_size=128, full_steps=1, refresh_every=0)  # 9 blocks
    handle = unbottle.enable_sparse_attention(pipe, cfg)
    sparse = run()
    assert handle.pattern_computations and block_sparse._compiled_flex is not None
    assert not block_sparse._flex_refused
    assert not torch.equal(sparse, stock) and rel_err(sparse, stock) < 0.2
    unbottle.disable_sparse_attention(pipe)
    assert torch.equal(run(), stock)


def test_shapes_flex_refuses_fall_back_to_the_reference():
    q, k, v = (torch.randn(1, 2, 300, 12, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = random_mask(1, 2, 300, 300, 0.5, bs=16)
    with pytest.warns(UserWarning, match="falls back"):
        out, lse = unbottle.block_sparse_attention(q, k, v, mask)
    ref, ref_lse = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask)
    assert rel_err(out, ref) <= 1e-2 and float((lse - ref_lse).abs().max()) < 2e-2
    dense, dense_lse = block_sparse.dense_attention_with_lse(q, k, v)
    dref, dref_lse = dense_attention_reference(q.float(), k.float(), v.float())
    assert rel_err(dense, dref) <= 1e-2 and float((dense_lse - dref_lse).abs().max()) < 2e-2

"""Triton block-sparse forward kernel against the PyTorch reference, on fresh random inputs.

With CUDA the kernel runs on the GPU. Without it, it runs in Triton's interpreter, which reads TRITON_INTERPRET=1
when triton is first imported; in a pytest session triton is already imported by then (through unbottle), so the
interpreter cases run in one spawned worker process started with the variable set. Masks are built as the engine
builds them (patterns.select_blocks → block_mask.pattern_to_block_mask). fp32 relative error ≤ 1e-4, bf16/fp16
≤ 1e-2 against the fp32 reference on upcast inputs; outputs land in NaN-filled buffers to catch unwritten rows.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from unbottle.attention_processors import block_mask as bm
from unbottle.attention_processors.patterns import select_blocks
from unbottle.attention_processors.reference import block_sparse_attention_reference

pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


# -- where the kernel runs: the GPU, or the interpreter in a worker process ----------------------------------------
def _kernel_module():
    from unbottle.attention_processors.kernels import block_sparse_fwd

    return block_sparse_fwd


def _is_interpreted() -> bool:
    return _kernel_module().INTERPRETED


def _attention(*args, **kwargs):
    return _kernel_module().block_sparse_attention_triton(*args, **kwargs)


def _launch_into(q, k, v, block_mask, scale, out, lse, out_scale=None, config=None, path=None):
    """Run the kernel into the given (poisoned) buffers and hand them back (a worker's writes stay in the worker)."""
    _kernel_module()._launch(q, k, v, block_mask, scale, out, lse, out_scale, config, path)
    return out, lse


def _tma_refusal(q, k, v, block_mask):
    """The error `path='tma'` raises for inputs the TMA kernel cannot take (None if it ran)."""
    try:
        _launch_into(q, k, v, block_mask, 0.125, torch.empty_like(q), None, path="tma")
    except ValueError as e:
        return str(e)
    return None


_pool: ProcessPoolExecutor | None = None


def run(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on the GPU, or in the interpreter worker without CUDA."""
    global _pool
    if CUDA:
        return fn(*args, **kwargs)
    if _pool is None:
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"  # inherited by the worker, whose first triton import then interprets
        try:
            spawn = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,))
            assert pool.submit(_is_interpreted).result(), "the worker's Triton kernel is not interpreted"
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
        _pool = pool
    return _pool.submit(fn, *args, **kwargs).result()


@pytest.fixture(scope="module", autouse=True)
def _stop_worker():
    yield
    global _pool
    if _pool is not None:
        _pool.shutdown()
        _pool = None


# -- inputs --------------------------------------------------------------------------------------------------------
def generator() -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(torch.seed() % 2**31)


def random_qkv(gen, b, h, n_q, n_kv, d, dtype=torch.float32):
    q = torch.randn(b, h, n_q, d, device=DEVICE, generator=gen).to(dtype)  # (B, H, Nq, D)
    k, v = (torch.randn(b, h, n_kv, d, device=DEVICE, generator=gen).to(dtype) for _ in range(2))  # (B, H, Nk, D)
    return q, k, v


def engine_mask(gen, b, h, n_q, n_kv, bs, density, empty_rows=()):
    """A BlockMask as the engine makes it: top blocks of random scores at `density` plus the diagonal (self-length)."""
    nq, nk = bm.num_blocks(n_q, bs), bm.num_blocks(n_kv, bs)
    scores = torch.rand(b, h, nq, nk, device=DEVICE, generator=gen)  # (B, H, nQ, nK)
    forced = torch.eye(nq, nk, dtype=torch.bool, device=DEVICE) if n_q == n_kv else torch.zeros(nq, nk).bool()
    indices, counts = select_blocks(scores, forced.to(DEVICE), density)
    counts = counts.clone()
    counts[..., list(empty_rows)] = 0  # query blocks that keep no key block
    return bm.pattern_to_block_mask(indices, counts, bs, n_q, n_kv)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def check(out, lse, q, k, v, block_mask, scale=None, out_scale=None):
    """Output and LSE equal the fp32 reference on upcast inputs (LSE -inf exactly where the reference's is)."""
    ref, ref_lse = block_sparse_attention_reference(q.float(), k.float(), v.float(), block_mask, scale=scale)
    if out_scale is not None:
        ref = ref * out_scale[..., None]
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert not out.isnan().any() and not lse.isnan().any(), "unwritten (NaN) rows"
    tol = TOL[q.dtype]
    assert rel_err(out, ref) <= tol, f"output relative error {rel_err(out, ref):.2e} > {tol}"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite) and (lse[~finite] == float("-inf")).all()
    lse_err = float((lse[finite] - ref_lse[finite]).abs().max()) if finite.any() else 0.0
    assert lse_err <= tol * max(1.0, float(ref_lse[finite].abs().max())), f"LSE error {lse_err:.2e}"
    return ref, ref_lse


def poisoned(q):
    out = torch.full_like(q, float("nan"))  # (B, H, Nq, D)
    lse = torch.full(q.shape[:3], float("nan"), device=q.device)  # (B, H, Nq)
    return out, lse


# -- correctness ---------------------------------------------------------------------------------------------------
SHAPES = [(256, 256, 64), (300, 300, 64), (200, 290, 128), (290, 130, 128)]  # multiple, tail, cross lengths


@pytest.mark.parametrize("density", [1.0, 0.25, 0.05])
@pytest.mark.parametrize(("n_q", "n_kv", "d"), SHAPES)
def test_fp32_matches_reference(n_q, n_kv, d, density):
    gen = generator()
    q, k, v = random_qkv(gen, 2, 3, n_q, n_kv, d)
    mask = engine_mask(gen, 2, 3, n_q, n_kv, 32, density)
    out, lse = run(_launch_into, q, k, v, mask, d**-0.5, *poisoned(q))
    check(out, lse, q, k, v, mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n_q", "n_kv", "d", "density"), [(300, 300, 64, 0.25), (200, 290, 128, 1.0)])
def test_half_precision_matches_reference(dtype, n_q, n_kv, d, density):
    gen = generator()
    q, k, v = random_qkv(gen, 2, 3, n_q, n_kv, d, dtype)
    mask = engine_mask(gen, 2, 3, n_q, n_kv, 32, density)
    out, lse = run(_launch_into, q, k, v, mask, d**-0.5, *poisoned(q))
    check(out, lse, q, k, v, mask)


def test_public_wrapper_scale_out_scale_and_return_lse():
    gen = generator()
    q, k, v = random_qkv(gen, 2, 3, 150, 170, 64)
    mask = engine_mask(gen, 2, 3, 150, 170, 32, 0.5)
    rho = torch.rand(2, 3, 150, device=DEVICE, generator=gen) + 0.5  # (B, H, Nq)
    out, lse = run(_attention, q, k, v, mask, scale=0.3, out_scale=rho)
    check(out, lse, q, k, v, mask, scale=0.3, out_scale=rho)
    plain = run(_attention, q, k, v, mask, return_lse=False)
    assert isinstance(plain, torch.Tensor)
    assert rel_err(plain, block_sparse_attention_reference(q, k, v, mask)[0]) <= TOL[torch.float32]


def test_rows_without_kept_blocks_get_zero_and_minus_inf():
    gen = generator()
    q, k, v = random_qkv(gen, 2, 3, 230, 230, 64)
    mask = engine_mask(gen, 2, 3, 230, 230, 32, 0.25, empty_rows=(0, 3, 7))  # 7 is the 6-row tail block
    rho = torch.rand(2, 3, 230, device=DEVICE, generator=gen)
    out, lse = run(_launch_into, q, k, v, mask, 0.125, *poisoned(q), rho)
    check(out, lse, q, k, v, mask, out_scale=rho)
    for qb in (0, 3, 7):
        rows = slice(qb * 32, min(qb * 32 + 32, 230))
        assert (out[:, :, rows] == 0).all() and (lse[:, :, rows] == float("-inf")).all()
    none_kept = torch.zeros(1, 1, 8, dtype=torch.int32, device=DEVICE)  # (1, 1, nQ)
    nothing = bm.pattern_to_block_mask(none_kept[..., None], none_kept, 32, 230, 230)
    out, lse = run(_launch_into, q, k, v, nothing, 0.125, *poisoned(q))
    assert (out == 0).all() and (lse == float("-inf")).all()


@pytest.mark.parametrize(("block_size", "config", "n_kv"), [
    (32, {"BLOCK_M": 16, "BLOCK_N": 16}, 200),  # kernel tiles half the BlockMask blocks
    ((32, 64), {"BLOCK_M": 32, "BLOCK_N": 32}, 70),  # rectangular blocks; a key tile lies wholly past the keys
])  # fmt: skip
def test_kernel_tiles_dividing_the_mask_blocks(block_size, config, n_kv):
    gen = generator()
    q_bs, kv_bs = (block_size, block_size) if isinstance(block_size, int) else block_size
    n_q = 150
    nq, nk = bm.num_blocks(n_q, q_bs), bm.num_blocks(n_kv, kv_bs)
    q, k, v = random_qkv(gen, 2, 3, n_q, n_kv, 64)
    indices = torch.rand(2, 3, nq, nk, device=DEVICE, generator=gen).argsort(-1).int()  # (B, H, nQ, nK)
    counts = torch.randint(1, nk + 1, (2, 3, nq), device=DEVICE, generator=gen, dtype=torch.int32)
    counts[0, 0, :] = nk  # every block, the tail included
    mask = BlockMask.from_kv_blocks(torch.zeros_like(counts), torch.zeros_like(indices), counts, indices,
                                    BLOCK_SIZE=block_size, seq_lengths=(n_q, n_kv))  # fmt: skip
    out, lse = run(_launch_into, q, k, v, mask, 0.125, *poisoned(q), None, config)
    check(out, lse, q, k, v, mask, scale=0.125)


def test_partial_tiles_with_noop_mask_mod_and_broadcast_mask():
    """Partial and full lists both run (no-op mask_mod keeps partial tiles whole); a (1, 1, nQ, K) mask broadcasts;
    a count past its list's width reads only the list, as in the reference."""
    gen = generator()
    n = 260
    nb = bm.num_blocks(n, 32)
    q, k, v = random_qkv(gen, 2, 3, n, n, 64)
    order = torch.rand(1, 1, nb, nb, device=DEVICE, generator=gen).argsort(-1).int()  # (1, 1, nQ, nK)
    # torch's from_kv_blocks densifies each list with as many columns as the list is wide (a device assert on CUDA
    # for a narrower list): both lists span all nK columns; partial = order[:3], full = order[3:] (disjoint)
    part_idx, full_idx = order.contiguous(), torch.cat([order[..., 3:], order[..., :3]], -1).contiguous()
    part_n = torch.randint(0, 4, (1, 1, nb), device=DEVICE, generator=gen, dtype=torch.int32)
    full_n = torch.randint(0, nb - 2, (1, 1, nb), device=DEVICE, generator=gen, dtype=torch.int32)
    mask = BlockMask.from_kv_blocks(part_n, part_idx, full_n, full_idx, BLOCK_SIZE=32, seq_lengths=(n, n))
    # then a count past its list's width in the kv-major lists we read (row 0: every block full, none partial)
    mask.kv_num_blocks = part_n.clone().index_fill_(-1, torch.tensor([0], device=DEVICE), 0)
    mask.full_kv_num_blocks = full_n.clone().index_fill_(-1, torch.tensor([0], device=DEVICE), nb + 2)
    out, lse = run(_launch_into, q, k, v, mask, 0.125, *poisoned(q))
    check(out, lse, q, k, v, mask, scale=0.125)


def test_head_size_96_padded_and_bnhd_layout():
    gen = generator()
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in random_qkv(gen, 2, 3, 190, 190, 96))
    mask = engine_mask(gen, 2, 3, 190, 190, 32, 0.5)
    out, lse = run(_attention, q, k, v, mask)
    check(out, lse, q, k, v, mask)


# -- the TMA kernel (Hopper's default path; fp16 in the interpreter, whose bf16 dot is wrong) -----------------------
TMA_DTYPES = [torch.float16, torch.bfloat16] if CUDA else [torch.float16]


@pytest.mark.parametrize("dtype", TMA_DTYPES)
@pytest.mark.parametrize(("n_q", "n_kv", "d", "density", "config"), [
    (256, 256, 64, 1.0, None),  # lengths a multiple of the blocks: no tail mask
    (300, 300, 64, 0.25, None),  # tails on both sides
    (200, 290, 128, 0.5, {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}),  # cross lengths, sub-tiles
    (290, 130, 32, 0.05, None),
])  # fmt: skip
def test_tma_path_matches_reference(dtype, n_q, n_kv, d, density, config):
    gen = generator()
    q, k, v = random_qkv(gen, 2, 3, n_q, n_kv, d, dtype)
    mask = engine_mask(gen, 2, 3, n_q, n_kv, 32, density, empty_rows=(1,))
    rho = torch.rand(2, 3, n_q, device=DEVICE, generator=gen) + 0.5  # (B, H, Nq)
    out, lse = run(_launch_into, q, k, v, mask, d**-0.5, *poisoned(q), rho, config, "tma")
    check(out, lse, q, k, v, mask, out_scale=rho)
    assert (out[:, :, 32:64] == 0).all() and (lse[:, :, 32:64] == float("-inf")).all()  # the empty query block


def test_tma_path_partial_tiles_and_bnhd_layout():
    """Partial and full lists both run on the TMA path, and a (B, N, H, D) tensor viewed as (B, H, N, D) is read
    through its strides (the layout diffusers' processors hand over)."""
    gen = generator()
    n = 260
    nb = bm.num_blocks(n, 32)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in random_qkv(gen, 2, 3, n, n, 64, torch.float16))
    order = torch.rand(2, 3, nb, nb, device=DEVICE, generator=gen).argsort(-1).int()  # (B, H, nQ, nK)
    part_idx, full_idx = order.contiguous(), torch.cat([order[..., 3:], order[..., :3]], -1).contiguous()
    part_n = torch.randint(0, 4, (2, 3, nb), device=DEVICE, generator=gen, dtype=torch.int32)
    full_n = torch.randint(1, nb - 2, (2, 3, nb), device=DEVICE, generator=gen, dtype=torch.int32)
    mask = BlockMask.from_kv_blocks(part_n, part_idx, full_n, full_idx, BLOCK_SIZE=32, seq_lengths=(n, n))
    out, lse = run(_launch_into, q, k, v, mask, 0.125, *poisoned(q.transpose(1, 2).contiguous().transpose(1, 2)),
                   None, None, "tma")  # fmt: skip
    check(out, lse, q, k, v, mask, scale=0.125)


@pytest.mark.parametrize("case", ["fp32", "d96"])
def test_tma_path_refuses_inputs_it_cannot_take(case):
    gen = generator()
    d, dtype = (64, torch.float32) if case == "fp32" else (96, torch.float16)
    q, k, v = random_qkv(gen, 1, 2, 64, 64, d, dtype)
    error = run(_tma_refusal, q, k, v, engine_mask(gen, 1, 2, 64, 64, 32, 1.0))
    assert error is not None and "path 'tma'" in error and "fp16/bf16, a power-of-two head size" in error


def test_default_path_is_tma_only_on_hopper():
    module = _kernel_module()
    q = torch.empty(1, 2, 64, 64, dtype=torch.bfloat16, device=DEVICE)
    hopper = CUDA and torch.cuda.get_device_capability()[0] >= 9 and not module.INTERPRETED
    assert module.use_tma(q, q, q, q) == hopper
    assert not module.use_tma(q.float(), q.float(), q.float(), q.float())  # fp32 keeps the pointer kernel


def test_a_failing_tma_kernel_falls_back_to_the_pointer_kernel(monkeypatch):
    """If the TMA kernel cannot run here (a Triton that cannot lower it), the pointer kernel runs those inputs, with
    a warning, and later calls go straight to it; asking for path='tma' explicitly still raises."""
    module = _kernel_module()
    if module.INTERPRETED:
        pytest.skip("this process imported triton in interpreter mode")
    tma_calls, pointer_calls = [], []

    def failing_tma(*args, **kwargs):
        tma_calls.append(1)
        raise RuntimeError("cannot lower tt.descriptor_load")

    class Capture:
        def __getitem__(self, grid):
            return lambda **kwargs: pointer_calls.append(kwargs["HEAD_DIM"])

    monkeypatch.setattr(module, "_block_sparse_fwd_tuned", Capture())
    monkeypatch.setattr(module, "INTERPRETED", True)  # CPU tensors through the checks: nothing runs
    monkeypatch.setattr(module, "use_tma", lambda *args: True)
    monkeypatch.setattr(module, "launch_tma", failing_tma)
    monkeypatch.setattr(module, "TMA_REFUSED", set())
    mask = engine_mask(generator(), 1, 2, 256, 256, 128, 0.5)
    q = torch.empty(1, 2, 256, 64, dtype=torch.bfloat16, device=DEVICE)  # on the mask's device (the GPU if any)
    with pytest.warns(UserWarning, match="TMA kernel failed.*cannot lower"):
        module.block_sparse_attention_triton(q, q, q, mask)
    module.block_sparse_attention_triton(q, q, q, mask)
    assert tma_calls == [1] and pointer_calls == [64, 64]
    assert module.TMA_REFUSED == {(torch.bfloat16, 64, 128, 128)}
    with pytest.raises(RuntimeError, match="cannot lower"):
        module._launch(q, q, q, mask, 0.125, torch.empty_like(q), None, path="tma")


# -- SparseD's tile importance (kernels/tile_importance.py) against patterns' PyTorch pass -------------------------
def _tile_sums(q, k, lse, block_size, scale):
    from unbottle.attention_processors.kernels.tile_importance import tile_probability_sums

    return tile_probability_sums(q, k, lse, block_size, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("n_q", "n_kv", "d", "bs"), [(256, 256, 64, 32), (300, 290, 64, 64), (130, 200, 96, 32),
                                                      (200, 333, 128, 16)])  # fmt: skip
def test_tile_importance_kernel_matches_the_pytorch_pass(dtype, n_q, n_kv, d, bs):
    from unbottle.attention_processors import patterns

    gen = generator()
    q, k, _ = random_qkv(gen, 2, 3, n_q, n_kv, d, dtype)
    scale = d**-0.5
    lse = torch.logsumexp(q.float() @ k.float().transpose(-1, -2) * scale, -1)  # (B, H, Nq)
    lse[:, 1, :5] = float("inf")  # rows the caller gives no mass (SparseD's rows without a kept key)
    sums = run(_tile_sums, q, k, lse, bs, scale)  # (B, H, nQ, nK)
    ref = patterns._tile_sums(q.float().cpu(), k.float().cpu(), lse.cpu(), bs, scale, 64, None)
    assert sums.shape == ref.shape == (2, 3, bm.num_blocks(n_q, bs), bm.num_blocks(n_kv, bs))
    assert rel_err(sums.cpu(), ref) <= TOL[dtype], f"relative error {rel_err(sums.cpu(), ref):.2e}"
    rows = torch.isfinite(lse).float()  # (B, H, Nq): each row's probabilities sum to 1 over the keys
    per_block = torch.nn.functional.pad(rows, (0, bm.num_blocks(n_q, bs) * bs - n_q)).view(2, 3, -1, bs).sum(-1)
    torch.testing.assert_close(sums.sum(-1).cpu(), per_block.cpu(), rtol=TOL[dtype], atol=TOL[dtype])


def test_tile_importance_kernel_refuses_what_it_cannot_take():
    from unbottle.attention_processors.kernels.tile_importance import tile_probability_sums

    q = torch.zeros(1, 2, 64, 64, device=DEVICE)
    lse = torch.zeros(1, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="block size 48"):
        tile_probability_sums(q, q, lse, 48, 0.125)
    with pytest.raises(ValueError, match=r"lse has shape \(1, 2, 63\)"):
        tile_probability_sums(q, q, lse[..., :63], 32, 0.125)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_exact_block_importance_uses_the_fused_kernel(monkeypatch):
    """On CUDA without a mask the engine's importance comes from the kernel, and equals the PyTorch pass."""
    from unbottle.attention_processors import patterns
    from unbottle.attention_processors.kernels import tile_importance

    calls = []
    real = tile_importance.tile_probability_sums
    monkeypatch.setattr(tile_importance, "tile_probability_sums", lambda *a: calls.append(1) or real(*a))
    gen = generator()
    q, k, _ = random_qkv(gen, 2, 4, 4100, 4100, 128, torch.bfloat16)
    lse = torch.logsumexp(q.float() @ k.float().transpose(-1, -2) * 128**-0.5, -1)
    fused = patterns.exact_block_importance(q, k, lse, 128, 128**-0.5)
    keep_all = torch.ones(1, 1, 1, 4100, dtype=torch.bool, device="cuda")  # with a mask the PyTorch pass runs
    ref = patterns.exact_block_importance(q.float(), k.float(), lse, 128, 128**-0.5, attn_mask=keep_all)
    assert calls == [1] and rel_err(fused, ref) <= 1e-2


# -- input validation ----------------------------------------------------------------------------------------------
def _custom_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _bad_inputs(case: str):
    """(args, kwargs) for block_sparse_attention_triton that it must refuse, per case."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = random_qkv(gen, 1, 2, 64, 64, 64)
    mask = engine_mask(gen, 1, 2, 64, 64, 32, 1.0)
    kw = {}
    if case == "q_3d":
        q = q[0]
    elif case == "int_dtype":
        q = q.int()
    elif case == "mixed_dtype":
        k = k.half()
    elif case == "head_8":
        q, k, v = q[..., :8], k[..., :8], v[..., :8]
    elif case == "head_512":
        q, k, v = (t.repeat(1, 1, 1, 8) for t in (q, k, v))
    elif case == "dv_differs":
        v = v[..., :32]
    elif case == "seq_lengths":
        q = q[:, :, :50]
    elif case == "block_8":
        mask = engine_mask(gen, 1, 2, 64, 64, 8, 1.0)
    elif case == "mask_heads":
        mask = engine_mask(gen, 1, 3, 64, 64, 32, 1.0)
    elif case == "custom_mask_mod":
        counts = torch.full((1, 1, 2), 2, dtype=torch.int32, device=DEVICE)
        idx = torch.arange(2, dtype=torch.int32, device=DEVICE).expand(1, 1, 2, 2).contiguous()
        mask = BlockMask.from_kv_blocks(counts, idx, BLOCK_SIZE=32, mask_mod=_custom_mask_mod, seq_lengths=(64, 64))
    elif case == "out_scale_shape":
        kw["out_scale"] = torch.ones(1, 2, 63, device=DEVICE)
    elif case == "out_scale_dtype":
        kw["out_scale"] = torch.ones(1, 2, 64, device=DEVICE, dtype=torch.float16)
    elif case == "scale_nan":
        kw["scale"] = float("nan")
    return (q, k, v, mask), kw


BAD = {
    "q_3d": "q must be a 4-D tensor", "int_dtype": "q.dtype is torch.int32", "mixed_dtype": "dtypes differ",
    "head_8": "head size D = 8", "head_512": "head size D = 512", "dv_differs": "must equal q's head size",
    "seq_lengths": "seq_lengths", "block_8": "BLOCK_SIZE = 8", "mask_heads": "kv_num_blocks has shape",
    "custom_mask_mod": "_custom_mask_mod", "out_scale_shape": "out_scale has shape",
    "out_scale_dtype": "out_scale is torch.float16", "scale_nan": "scale = nan",
}  # fmt: skip


def _refusal(case: str) -> str:
    args, kwargs = _bad_inputs(case)
    try:
        _attention(*args, **kwargs)
    except ValueError as e:
        return str(e)
    return "accepted"


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_inputs_are_refused_with_the_argument_named(case):
    assert BAD[case] in run(_refusal, case)


@pytest.mark.skipif(CUDA, reason="CPU-only check")
def test_compiled_kernel_refuses_cpu_tensors():
    module = _kernel_module()
    if module.INTERPRETED:
        pytest.skip("this process imported triton in interpreter mode")
    q = torch.randn(1, 1, 32, 64)
    mask = engine_mask(generator(), 1, 1, 32, 32, 32, 1.0)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        module.block_sparse_attention_triton(q, q, q, mask)


def test_launch_specialisation_is_independent_of_sequence_length(monkeypatch):
    """No recompilation per sequence length: every launch argument Triton specialises on is the same for all N."""
    jit = pytest.importorskip("triton.runtime.jit")
    from triton.backends.compiler import BaseBackend

    module = _kernel_module()
    if module.INTERPRETED:
        pytest.skip("this process imported triton in interpreter mode, which does not specialise")
    launches = []

    class Capture:
        def __getitem__(self, grid):
            return lambda **kwargs: launches.append(kwargs)

    monkeypatch.setattr(module, "_block_sparse_fwd_tuned", Capture())
    monkeypatch.setattr(module, "INTERPRETED", True)  # CPU tensors through the checks: nothing runs
    for n in (1000, 1003, 1517, 4097, 17776, 32760):
        q = torch.empty(2, 24, n, 128, dtype=torch.bfloat16)
        nb = bm.num_blocks(n, 128)
        mask = bm.pattern_to_block_mask(*select_blocks(torch.rand(1, 1, nb, nb), torch.eye(nb).bool(), 0.1), 128, n, n)
        module.block_sparse_attention_triton(q, q, q, mask)
    skip = set(module._block_sparse_fwd_kernel.do_not_specialize)

    def key(kwargs):
        return tuple(
            (name, jit.native_specialize_impl(BaseBackend, value, False, True, True))
            if isinstance(value, (int, torch.Tensor)) and not isinstance(value, bool) else (name, repr(value))
            for name, value in kwargs.items() if name not in skip
        )  # fmt: skip

    assert len({key(kwargs) for kwargs in launches}) == 1


# -- GPU only ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize(("n_q", "n_kv", "density"), [(1000, 1000, 1.0), (1000, 1000, 0.25), (4608, 4608, 0.05),
                                                      (640, 1200, 0.5), (1200, 640, 0.25)])  # fmt: skip
def test_gpu_matches_reference_at_128_blocks(dtype, d, n_q, n_kv, density):
    gen = generator()
    q, k, v = random_qkv(gen, 2, 3, n_q, n_kv, d, dtype)
    mask = engine_mask(gen, 2, 3, n_q, n_kv, 128, density, empty_rows=(1,))
    torch.full((64 * 2**20,), float("nan"), device="cuda")  # poison the caching allocator's free memory
    out, lse = _attention(q, k, v, mask)
    check(out, lse, q, k, v, mask)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_no_recompilation_for_new_sequence_lengths():
    module = _kernel_module()
    gen = generator()

    def call(n):
        q, k, v = random_qkv(gen, 1, 2, n, n, 128, torch.bfloat16)
        out, lse = module.block_sparse_attention_triton(q, k, v, engine_mask(gen, 1, 2, n, n, 128, 0.25))
        torch.cuda.synchronize()

    from unbottle.attention_processors.kernels import block_sparse_fwd_tma

    def variants():  # both kernels: the default path on Hopper is the TMA one
        kernels = (module._block_sparse_fwd_kernel, block_sparse_fwd_tma._block_sparse_fwd_tma_kernel)
        return sum(len(cache[0]) for kernel in kernels for cache in kernel.device_caches.values())

    call(1024)  # autotunes and compiles the configs once
    call(1000)  # a length with a tail: the TMA kernel's MASK_TAIL variant
    compiled = variants()
    for n in (1003, 1517, 2048, 4097, 5000):
        call(n)
    assert variants() == compiled


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs a Hopper (or newer) GPU")
def test_gpu_engine_runs_long_sequences_on_the_triton_kernel(monkeypatch):
    """The engine's `block_sparse_attention` takes our kernel from TRITON_MIN_KEYS keys up, FlexAttention below."""
    from unbottle.attention_processors import block_sparse
    from unbottle.attention_processors.kernels import block_sparse_fwd

    calls = []
    real = block_sparse_fwd.block_sparse_attention_triton
    monkeypatch.setattr(block_sparse_fwd, "block_sparse_attention_triton",
                        lambda *a, **kw: calls.append(a[0].shape[2]) or real(*a, **kw))  # fmt: skip
    gen = generator()
    for n in (block_sparse.TRITON_MIN_KEYS + 100, 4608):
        q, k, v = random_qkv(gen, 1, 2, n, n, 128, torch.bfloat16)
        mask = engine_mask(gen, 1, 2, n, n, 128, 0.05)
        out, lse = block_sparse.block_sparse_attention(q, k, v, mask)
        check(out, lse, q, k, v, mask)
    assert calls == [block_sparse.TRITON_MIN_KEYS + 100]

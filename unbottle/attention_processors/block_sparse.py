"""`block_sparse_attention`: attention over the kept tiles of a FlexAttention `BlockMask`, with log-sum-exps.

CPU runs the fast routes of cpu_attention.py (the reference's results). On CUDA with a `hopper` extra package
installed (cuDNN frontend BSA, FlashAttention-4), every route is measured once per call shape and the fastest that
agrees with FlexAttention runs (backend_choice.py). Otherwise CUDA runs our Triton kernel (on Hopper its TMA path)
where it was measured faster: on Hopper, fp16/bf16, power-of-two head sizes, from `TRITON_MIN_KEYS` keys
up (on an H200 1.07–1.2× compiled FlexAttention from 17,776 keys, and no recompilation per sequence length; at 4,608
keys FlexAttention is level or ahead, bench/results/attention-h200.md). Everything else runs compiled FlexAttention
(eager FlexAttention ignores full-tile block structure, see notes), and the reference where that fails.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .backend_choice import Backend, register_backend, run_measured
from .cpu_attention import block_sparse_attention_cpu, dense_attention_cpu
from .kernels import flash4
from .key_mask import KeyMask, factor_key_mask
from .reference import block_sparse_attention_reference, dense_attention_reference

TRITON_MIN_KEYS = 16_384  # below this FlexAttention is as fast (and lighter on the CPU per call)
_compiled_flex = None
_compiled_flex_bias = None
_triton_refused: set = set()  # (head dim, value dim, dtype, block sizes) that our Triton kernel failed on
_flex_refused: set = set()  # (head dim, value dim, dtype, block sizes) that compiled FlexAttention failed on
_dense_lse_backends: dict = {}  # (head dim, value dim, dtype) -> the CUDA route that gave a correct LSE


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None):
    global _compiled_flex
    if _compiled_flex is None:
        # one compiled graph per shape; past the recompile limit dynamo would fall back to eager FlexAttention, which
        # ignores full-tile block structure, so leave room for the shapes of a real pipeline (stages, CFG, sizes)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    out, lse = _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
    return out, lse


def _flex_bias_call(q, k, v, block_mask, scale, bias):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[b, kv_idx]

    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, return_lse=True)


def _flex_bias(q, k, v, block_mask: BlockMask, scale: float | None, bias: torch.Tensor):
    """Compiled FlexAttention with a per-key additive bias (B, Nk): one graph per shape, the bias an input of it."""
    global _compiled_flex_bias
    if _compiled_flex_bias is None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_flex_bias = torch.compile(_flex_bias_call, dynamic=False)
    return _compiled_flex_bias(q, k, v, block_mask, scale, bias)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None) -> tuple:
    """Raise TypeError/ValueError naming the bad argument; the (head dim, value dim, dtype, block sizes) key."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, N, D), got {type(x).__name__}")
    if not isinstance(block_mask, BlockMask):
        raise TypeError(
            "block_mask must be a FlexAttention BlockMask (from torch.nn.attention.flex_attention.create_block_mask), "
            f"got {type(block_mask).__name__}"
        )
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a number or None (= 1/sqrt(D)), got {type(scale).__name__}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape[:-1] + (k.shape[-1],) or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v shapes do not match: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    seq_q, seq_k = block_mask.seq_lengths
    if (seq_q, seq_k) != (q.shape[2], k.shape[2]):
        raise ValueError(f"block_mask covers {(seq_q, seq_k)} tokens but q, k have {(q.shape[2], k.shape[2])}")
    return (q.shape[-1], v.shape[-1], q.dtype, block_mask.BLOCK_SIZE)


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None,
    return_lse: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Block-sparse attention (B, H, N, D) over a FlexAttention BlockMask, as in FlashAttention-2's tiling (Dao, 2023).

    Returns the output and, with `return_lse`, the natural-log log-sum-exp of each row's kept scores (B, H, Nq).
    """
    key = _check(q, k, v, block_mask, scale)
    measured = run_measured(q, k, v, block_mask, scale) if q.is_cuda else None  # a `hopper` package installed
    if measured is not None:
        return measured if return_lse else measured[0]
    if q.is_cuda and k.shape[2] >= TRITON_MIN_KEYS and v.shape[-1] == q.shape[-1] and key not in _triton_refused:
        from .kernels.block_sparse_fwd import block_sparse_attention_triton, use_tma

        if use_tma(q, k, v, q):  # the output takes q's layout
            try:
                out, lse = block_sparse_attention_triton(q, k, v, block_mask, scale=scale)
                return (out, lse) if return_lse else out
            except ValueError:  # what the kernel refuses (e.g. partial tiles under a real mask_mod): FlexAttention
                pass
            except Exception as e:  # noqa: BLE001 — a kernel that fails to build here: FlexAttention from now on
                _triton_refused.add(key)
                warnings.warn(f"the Triton kernel failed on head size {q.shape[-1]}, {q.dtype} ({type(e).__name__}: "
                              f"{str(e)[:200]}); FlexAttention runs this shape from now on", stacklevel=2)  # fmt: skip
    return block_sparse_attention_flex(q, k, v, block_mask, scale, return_lse)


def _triton_refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> str | None:
    from .kernels.block_sparse_fwd import use_tma

    if not q.is_cuda or v.shape[-1] != q.shape[-1]:
        return "it needs CUDA tensors and equal head sizes for keys and values"
    return None if use_tma(q, k, v, q) else "its TMA path does not take these inputs (Hopper, head size, alignment)"


def _triton_run(q, k, v, block_mask, scale):
    from .kernels.block_sparse_fwd import block_sparse_attention_triton

    return block_sparse_attention_triton(q, k, v, block_mask, scale=scale)


def _flex_refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> str | None:
    return None if q.is_cuda else "it runs compiled on CUDA only"


register_backend(Backend("triton", _triton_run, _triton_refusal, lambda: True))
register_backend(Backend("flex", _flex, _flex_refusal, lambda: True))


def block_sparse_attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None = None,
    return_lse: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`block_sparse_attention` without our Triton kernel: compiled FlexAttention on CUDA, the CPU route on CPU,
    else the reference."""
    key = _check(q, k, v, block_mask, scale)
    out = None
    if q.is_cuda and key not in _flex_refused:
        try:
            out, lse = _flex(q, k, v, block_mask, scale)
        except Exception as e:  # noqa: BLE001 — compilation can fail many ways (e.g. head sizes FlexAttention lacks)
            _flex_refused.add(key)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
            warnings.warn(
                f"FlexAttention cannot run head size {q.shape[-1]}, blocks {block_mask.BLOCK_SIZE}, {q.dtype} here "
                f"({type(e).__name__}: {reason}); block-sparse attention falls back to the PyTorch reference for this "
                "shape",
                stacklevel=2,
            )
    if out is None:
        fallback = block_sparse_attention_cpu if q.device.type == "cpu" else block_sparse_attention_reference
        out, lse = fallback(q, k, v, block_mask, scale=scale)
    return (out, lse) if return_lse else out


def block_sparse_attention_key_masked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, key_mask: KeyMask,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Block-sparse attention (B, H, Nq, D) and LSE (B, H, Nq) where only the keys of `key_mask` may be attended:
    compiled FlexAttention with the mask as a per-key bias on CUDA, the CPU route (else the reference) with a
    (B, 1, 1, Nk) mask otherwise. Rows that may attend no key get output 0 and LSE -inf."""
    key = _check(q, k, v, block_mask, scale)
    out = None
    if q.is_cuda and key not in _flex_refused:
        try:
            out, lse = _flex_bias(q, k, v, block_mask, scale, key_mask.bias().to(q.device))
        except Exception as e:  # noqa: BLE001 — compilation can fail many ways (e.g. head sizes FlexAttention lacks)
            _flex_refused.add(key)
            warnings.warn(f"FlexAttention cannot run head size {q.shape[-1]}, {q.dtype} with a key mask here "
                          f"({type(e).__name__}: {str(e)[:200]}); the PyTorch reference runs this shape",
                          stacklevel=2)  # fmt: skip
    if out is None:
        keys = key_mask.as_attn_mask()  # (B, 1, 1, Nk)
        fallback = block_sparse_attention_cpu if q.device.type == "cpu" else block_sparse_attention_reference
        out, lse = fallback(q, k, v, block_mask, scale=scale, attn_mask=keys)
    if key_mask.rows is not None:
        lse = lse.masked_fill(~key_mask.rows[:, None, :], float("-inf"))
    return key_mask.zero_empty_rows(out), lse


def _full_block_mask(nq: int, nk: int, device: torch.device) -> BlockMask:
    """Every (query, key) tile of 128 tokens kept, as full tiles."""
    from .block_mask import num_blocks, pattern_to_block_mask

    nqb, nkb = num_blocks(nq, 128), num_blocks(nk, 128)
    indices = torch.arange(nkb, device=device, dtype=torch.int32).expand(1, 1, nqb, nkb)
    counts = torch.full((1, 1, nqb), nkb, device=device, dtype=torch.int32)
    return pattern_to_block_mask(indices, counts, 128, nq, nk)


def _dense_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, backend: str):
    if backend == "cudnn":
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, False, False, scale=scale
        )[:2]
    elif backend == "fa4":  # FlashAttention-4's dense forward, (B, N, H, D) views
        from flash_attn.cute import flash_attn_func

        out, lse = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), softmax_scale=scale, return_lse=True)
        out = out.transpose(1, 2)
    elif backend == "flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    else:
        out, lse = _flex(q, k, v, _full_block_mask(q.shape[2], k.shape[2], q.device), scale)
    return out, lse.float().reshape(q.shape[:3])


def dense_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | KeyMask | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Exact attention (B, H, N, D) and its natural-log row LSE (B, H, N): FA4/cuDNN/flash/FlexAttention on CUDA (per
    head size and dtype, the first route whose LSE matches the reference on a probe; FlexAttention under a key
    mask), the CPU route on CPU, the reference otherwise."""
    if isinstance(attn_mask, torch.Tensor) and attn_mask.dim() >= 2 and attn_mask.shape[-2] == 1:  # a key mask
        attn_mask = factor_key_mask(attn_mask, q.shape[0], q.shape[2], k.shape[2]) or attn_mask  # (no host sync)
    if isinstance(attn_mask, KeyMask):
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            return block_sparse_attention_key_masked(q, k, v, _full_block_mask(q.shape[2], k.shape[2], q.device),
                                                     attn_mask, scale)  # fmt: skip
        dense = dense_attention_cpu if q.device.type == "cpu" else dense_attention_reference
        out, lse = dense(q, k, v, attn_mask=attn_mask.as_attn_mask(), scale=scale)
        if attn_mask.rows is not None:
            lse = lse.masked_fill(~attn_mask.rows[:, None, :], float("-inf"))
        return attn_mask.zero_empty_rows(out), lse
    if q.device.type == "cpu":
        return dense_attention_cpu(q, k, v, attn_mask=attn_mask, scale=scale)
    if not q.is_cuda or attn_mask is not None or q.dtype not in (torch.float16, torch.bfloat16):
        return dense_attention_reference(q, k, v, attn_mask=attn_mask, scale=scale)
    key = (q.shape[-1], v.shape[-1], q.dtype)
    backend = _dense_lse_backends.get(key)
    if backend is None:
        backend = _dense_lse_backends[key] = _probe_dense_backend(q.shape[-1], v.shape[-1], q.dtype, q.device)
    if backend == "reference":
        return dense_attention_reference(q, k, v, scale=scale)
    for route in dict.fromkeys((backend, "flex")):
        try:
            return _dense_cuda(q, k, v, scale, route)
        except Exception:  # noqa: BLE001 — a shape this route refuses (cuDNN limits, FlexAttention head sizes)
            continue
    _dense_lse_backends[key] = "reference"
    return dense_attention_reference(q, k, v, scale=scale)


def _probe_dense_backend(d: int, dv: int, dtype: torch.dtype, device: torch.device) -> str:
    """The first CUDA route whose output and LSE match the reference on a small random problem of this shape
    (FlashAttention-4, with the `hopper` extra, then cuDNN, flash, FlexAttention)."""
    q, k = (torch.randn(1, 2, 300, d, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(1, 2, 300, dv, device=device, dtype=dtype)
    ref, ref_lse = dense_attention_reference(q, k, v)
    routes = ("fa4", "cudnn", "flash", "flex") if flash4.available() else ("cudnn", "flash", "flex")
    for backend in routes:  # FlashAttention-4 first where installed: its dense forward leads cuDNN's on Hopper
        try:
            out, lse = _dense_cuda(q, k, v, None, backend)
        except Exception:  # noqa: BLE001 — a route that refuses this shape or fails to build here
            continue
        if lse.shape == ref_lse.shape and torch.allclose(lse, ref_lse, atol=2e-2, rtol=0):
            if torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2):
                return backend
    return "reference"

"""Attention benchmark: dense SDPA (cuDNN, flash), compiled FlexAttention and our Triton block-sparse
kernel on the same random block masks of 128-token blocks, bf16, batch 1, layout (B, H, N, D).

    unbottle bench attention -o bench/results          # or: python bench/attention.py -o bench/results

For each shape (N, H, D) and block density: dense SDPA through `sdpa_kernel(CUDNN_ATTENTION)` and
`sdpa_kernel(FLASH_ATTENTION)` (timed once per shape: they ignore the mask), `torch.compile(flex_attention)` on a
`BlockMask` built from the kept-block lists with `BlockMask.from_kv_blocks` (every kept tile full, no mask_mod), and
`block_sparse_attention_triton` on that same BlockMask. Times are medians of `triton.testing.do_bench` (L2 flushed
before each call). Our output is checked against FlexAttention's on every config (at density 1.0 also against
dense SDPA); a config that fails the check is flagged in every output and makes the command exit 1. Also measured:
the first-call latency (compilation, autotuning) of FlexAttention and ours on two fresh sequence lengths, and
whether either compiles again for the second length. A backend that fails (a head size cuDNN refuses, out of
memory) leaves an error string in its row and the run goes on. Writes attention-<gpu>.json and .md, plus a plot of
time against density (attention-<gpu>.png) when matplotlib is importable.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ...attention_processors.block_mask import num_blocks, pattern_to_block_mask
from ...attention_processors.patterns import keep_count, kept_fraction, select_blocks, select_by_coverage
from ...errors import RunError
from .. import measure, script
from ..measure import error_text, free, sync
from ..results import close_run, environment, fmt
from .options import (
    BLOCK_SIZE,
    CALIBRATED_MASK_DEFINITION,
    CHECK_TOLERANCE,
    CHOOSER_NAMES,
    FLOPS_DEFINITION,
    HOPPER_BACKENDS,
    LABELS,
    MASK_DEFINITION,
    MIN_REPEATS,
    NO_CUDA_MESSAGE,
    TIMING_DEFINITION,
    BenchOptions,
    add_arguments,
    options_from_args,
)
from .report import evaluate_targets, failed_checks, finish_row, fmt_error, write_outputs

# ---- masks and FLOPs ----------------------------------------------------------------------------------------------


def random_block_pattern(
    n: int, heads: int, density: float, block_size: int = BLOCK_SIZE, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random (indices (1, H, nQ, K), counts (1, H, nQ)) int32 via the engine's SparseD top-k select_blocks."""
    nb = num_blocks(n, block_size)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(1, heads, nb, nb, generator=generator)  # (1, H, nQ, nK), CPU: the same on every device
    forced = torch.zeros(nb, nb, dtype=torch.bool, device=device)  # (nQ, nK): nothing forced
    return select_blocks(scores.to(device), forced, density, max_forced=0)


def calibrated_block_pattern(
    n: int, heads: int, density: float, block_size: int = BLOCK_SIZE, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Seeded (indices (1, H, nQ, K), counts (1, H, nQ)) int32 of a calibrated budget (`CALIBRATED_MASK_DEFINITION`)
    whose mean kept fraction is the uniform budget's at `density`, and the coverage that gives it."""
    nb = num_blocks(n, block_size)
    target = keep_count(density, nb) / nb
    generator = torch.Generator().manual_seed(seed)
    temperature = torch.logspace(math.log10(0.5), math.log10(4.0), heads).view(1, heads, 1, 1)  # (1, H, 1, 1)
    mass = (torch.randn(1, heads, nb, nb, generator=generator) * temperature).softmax(-1)  # (1, H, nQ, nK), CPU
    forced = torch.zeros(nb, nb, dtype=torch.bool)  # (nQ, nK): nothing forced
    low, high = 0.0, 1.0  # bisection on the coverage: the kept fraction rises with it
    for _ in range(30):
        mid = (low + high) / 2
        _, counts = select_by_coverage(mass, forced, mid, 1)
        low, high = (mid, high) if kept_fraction(counts, nb) < target else (low, mid)
    candidates = [(abs(kept_fraction(select_by_coverage(mass, forced, c, 1)[1], nb) - target), c) for c in (low, high)]
    coverage = min(candidates)[1]
    indices, counts = select_by_coverage(mass, forced, coverage, 1)
    return indices.to(device), counts.to(device), coverage


def block_lengths(length: int, block_size: int) -> torch.Tensor:
    """(nB,) int64 real tokens per block: `block_size`, the last one possibly fewer."""
    starts = torch.arange(num_blocks(length, block_size), dtype=torch.int64) * block_size
    return (length - starts).clamp(max=block_size)


def computed_flops(
    indices: torch.Tensor, counts: torch.Tensor, n_q: int, n_kv: int, block_size: int, head_dim: int,
    batch: int = 1,
) -> int:  # fmt: skip
    """Block-sparse forward FLOPs, FlashAttention-2 count (Dao, 2023): Σ 4·rows·kept keys·D over (B, H, q block)."""
    n_qb, n_kb = num_blocks(n_q, block_size), num_blocks(n_kv, block_size)
    indices, counts = indices[:, :, :n_qb].cpu().long(), counts[:, :, :n_qb].cpu().long()  # (B|1, H, nQ, K), (…, nQ)
    width = indices.shape[-1]
    valid = torch.arange(width) < counts.clamp(max=width)[..., None]  # (B|1, H, nQ, K)
    keys = block_lengths(n_kv, block_size)[indices.clamp(0, n_kb - 1)]  # (B|1, H, nQ, K) tokens of each kept block
    kept_keys = torch.where(valid, keys, 0).sum(-1)  # (B|1, H, nQ)
    rows = block_lengths(n_q, block_size)  # (nQ,)
    repeat = batch if indices.shape[0] == 1 else 1
    return int(4 * head_dim * repeat * int((kept_keys * rows).sum()))


def dense_flops(n_q: int, n_kv: int, heads: int, head_dim: int, batch: int = 1) -> int:
    """Forward FLOPs of dense attention, 4·B·H·Nq·Nk·D (FlashAttention-2 count, Dao 2023)."""
    return 4 * batch * heads * n_q * n_kv * head_dim


# ---- measuring ----------------------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object]) -> float:
    """Median ms of `fn` on the GPU, `triton.testing.do_bench` (return_mode='median'), ≥ MIN_REPEATS timed calls."""
    from triton.testing import do_bench

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    estimate = (time.perf_counter() - start) * 1e3
    warmup, rep = max(25.0, 2 * estimate), max(100.0, MIN_REPEATS * estimate)
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _wall_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock ms of one call, synchronized before and after (first-call latency)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


@contextlib.contextmanager
def fresh_compile_caches(enabled: bool) -> Iterator[str | None]:
    """Triton's and Inductor's disk caches in a new temporary folder (first calls compile as in a new environment)."""
    if not enabled:
        yield None
        return
    root = tempfile.mkdtemp(prefix="unbottle-bench-caches-")
    saved = {k: os.environ.get(k) for k in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["TRITON_CACHE_DIR"] = os.path.join(root, "triton")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor")
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def _kernel_variants(kernel_module: object) -> int | None:
    """Compiled variants of our Triton kernels in this process (the pointer and TMA kernels' JIT caches), None where
    Triton hides them."""
    from unbottle.attention_processors.kernels import block_sparse_fwd_tma

    total = 0
    kernels = ((kernel_module, "_block_sparse_fwd_tuned"), (block_sparse_fwd_tma, "_block_sparse_fwd_tma_tuned"))
    for module, name in kernels:
        fn = getattr(getattr(module, name, None), "fn", None)
        caches = getattr(fn, "device_caches", None)
        if caches is None:
            return None
        try:
            total += sum(len(entry[0]) for entry in caches.values())  # entry = (kernel_cache, …) in Triton 3.x
        except (TypeError, IndexError):
            return None
    return total


def _tuned_config(kernel_module: object) -> str | None:
    """The configs our launcher keeps per autotuning key (kernel "tma" or "pointer", head size, block sizes, tail,
    dtypes): tuned once each, then launched directly."""
    tuned = getattr(kernel_module, "TUNED", None)
    return None if not tuned else "; ".join(f"{key[0]} D={key[1]} tail={key[4]}: {cfg}" for key, cfg in tuned.items())


def _dynamo_graphs() -> int | None:
    """Graphs dynamo has compiled in this process (torch._dynamo.utils.counters['stats']['unique_graphs'])."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 — a private counter; absent means unknown
        return None


def random_qkv(n: int, heads: int, head_dim: int, seed: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Seeded random q, k, v, each (1, H, N, D)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(1, heads, n, head_dim, generator=generator, device=device, dtype=dtype) for _ in "qkv")


def _compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(max abs error, relative Frobenius error, max |ref|) of `out` against `ref`, in fp32."""
    ref = ref.float()
    diff = out.float() - ref
    max_abs = float(diff.abs().max())
    rel = float(diff.norm() / ref.norm().clamp_min(1e-30))
    return max_abs, rel, float(ref.abs().max())


def within_tolerance(max_abs: float, rel: float, ref_max: float, tol: float = CHECK_TOLERANCE) -> bool:
    """Relative error ≤ tol and max abs error ≤ tol · max(1, max |reference|); False for NaN."""
    return bool(rel <= tol and max_abs <= tol * max(1.0, ref_max))


def measure_first_call(
    flex: Callable, ours: Callable, options: BenchOptions, device: torch.device, dtype: torch.dtype,
    kernel_module: object, log: Callable[[str], None],
) -> dict:  # fmt: skip
    """First-call (compile/autotune) and warm wall ms of ours and FlexAttention per fresh length, and recompilation."""
    h, d, density = options.first_call_heads, options.first_call_head_dim, options.first_call_density
    bs = options.block_size
    result: dict = {
        "heads": h, "head_dim": d, "density": density, "lengths": list(options.first_call_lengths),
        "fresh_caches": options.fresh_caches, "ours": [], "flex": [], "ours_kernel_variants": [],
        "flex_graphs": [],
        "note": "Per length, ours runs before FlexAttention; the CUDA context, cuBLAS and Triton's driver were "
        "started before either. Warm call = the median wall time of 3 synchronized calls right after the first.",
    }  # fmt: skip
    prepared = []
    for n in options.first_call_lengths:
        q, k, v = random_qkv(n, h, d, options.seed, device, dtype)
        indices, counts = random_block_pattern(n, h, density, bs, options.seed, device)
        prepared.append((n, q, k, v, pattern_to_block_mask(indices, counts, bs, n, n)))
    sync(device)
    for n, q, k, v, mask in prepared:
        calls = {
            "ours": lambda q=q, k=k, v=v, mask=mask: ours(q, k, v, mask, return_lse=False),
            "flex": lambda q=q, k=k, v=v, mask=mask: flex(q, k, v, block_mask=mask),
        }
        for name, call in calls.items():
            entry = {"n": n, "first_call_ms": None, "warm_call_ms": None, "error": None}
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    entry["first_call_ms"] = _wall_ms(call, device)
                    entry["warm_call_ms"] = statistics.median(_wall_ms(call, device) for _ in range(3))
            except Exception as e:  # noqa: BLE001 — recorded, the run goes on
                entry["error"] = error_text(e, caught)
            result[name].append(entry)
            log(f"first call {name} N={n}: {fmt(entry['first_call_ms'], 1)} ms, warm "
                f"{fmt(entry['warm_call_ms'], 3)} ms{' ' + entry['error'] if entry['error'] else ''}")  # fmt: skip
        result["ours_kernel_variants"].append(_kernel_variants(kernel_module))
        result["flex_graphs"].append(_dynamo_graphs())
    for key, counts in (("ours", result["ours_kernel_variants"]), ("flex", result["flex_graphs"])):
        known = len(counts) >= 2 and None not in counts[:2] and not any(e["error"] for e in result[key][:2])
        result[f"{key}_recompiled_on_second_length"] = (counts[1] > counts[0]) if known else None
    del prepared
    return result


def _measure_shape(
    shape: tuple[int, int, int], options: BenchOptions, flex: Callable, ours: Callable, device: torch.device,
    dtype: torch.dtype, timer: Callable[[Callable[[], object]], float], log: Callable[[str], None],
    on_row: Callable[[dict], None], ours_module: object = None,
) -> None:  # fmt: skip
    """All densities of one shape: dense SDPA once (cuDNN, flash), then FlexAttention and ours on each mask."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, h, d = shape
    bs = options.block_size
    label = f"{n}x{h}x{d}"
    error: str | None = None  # why the inputs could not be made, if they could not
    try:
        q, k, v = random_qkv(n, h, d, options.seed, device, dtype)  # (1, H, N, D) each
    except Exception as e:  # noqa: BLE001 — e.g. out of memory: every row of this shape records it
        error = error_text(e)
        q = k = v = None
    dense_ms: dict[str, float | None] = {}
    dense_err: dict[str, str] = {}
    dense_out = None  # (1, H, N, D): the first dense output, to check density-1.0 rows against
    for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        dense_ms[name] = None
        if q is None:
            dense_err[name] = error
            continue
        out = None
        try:
            with warnings.catch_warnings(record=True) as caught, sdpa_kernel(backend):
                warnings.simplefilter("always")
                out = F.scaled_dot_product_attention(q, k, v)
                sync(device)
                dense_ms[name] = timer(lambda: F.scaled_dot_product_attention(q, k, v))
            if dense_out is None:
                dense_out = out
        except Exception as e:  # noqa: BLE001 — a head size or length the backend refuses, out of memory
            dense_err[name] = error_text(e, caught)
        del out  # this backend's output (the first one lives on as dense_out)
        free(device)
        log(f"{label} dense {LABELS[name]}: {fmt(dense_ms[name], 3)} ms {dense_err.get(name, '')}")
    for density in options.densities:
        row: dict = {
            "shape": label, "n": n, "heads": h, "head_dim": d, "batch": 1, "density": density,
            "budget": options.budget, "block_size": bs, "n_blocks": num_blocks(n, bs), "kept_blocks_per_row": None,
            "actual_density": None,
            "computed_fraction": None, "flops": None, "dense_flops": dense_flops(n, n, h, d),
            "ms": dict(dense_ms), "error": dict(dense_err),
            "check": {"reference": None, "max_abs_err": None, "rel_err": None, "ok": None, "error": None},
        }  # fmt: skip
        if q is None:
            row["error"].update({"flex": error, "ours": error})
            row["ms"].update({"flex": None, "ours": None})
            on_row(finish_row(row))
            continue
        outs: dict[str, torch.Tensor] = {}
        try:
            if options.budget == "calibrated":
                indices, counts, row["coverage"] = calibrated_block_pattern(n, h, density, bs, options.seed, device)
            else:
                indices, counts = random_block_pattern(n, h, density, bs, options.seed, device)
            mask = pattern_to_block_mask(indices, counts, bs, n, n)
            row["flops"] = computed_flops(indices, counts, n, n, bs, d)
            row["kept_blocks_per_row"] = int(counts.max())
            row["actual_density"] = float(counts.float().mean()) / row["n_blocks"]
            row["computed_fraction"] = row["flops"] / row["dense_flops"]
            calls = {
                "flex": lambda mask=mask: flex(q, k, v, block_mask=mask),
                "ours": lambda mask=mask: ours(q, k, v, mask, return_lse=False),
            }
            calls.update(hopper_calls(q, k, v, mask, row))
        except Exception as e:  # noqa: BLE001 — the mask could not be built: both sparse backends lack it
            calls = {}
            row["error"].update({"flex": f"mask: {error_text(e)}", "ours": f"mask: {error_text(e)}"})
            row["ms"].update({"flex": None, "ours": None})
        for name, call in calls.items():
            row["ms"][name] = None
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    outs[name] = call()  # compiles / autotunes on first use
                    sync(device)
                    row["ms"][name] = timer(call)
            except Exception as e:  # noqa: BLE001 — recorded in the row, the run goes on
                row["error"][name] = error_text(e, caught)
                free(device)
        _check(row, outs, dense_out if density == 1.0 else None)
        _check_hopper(row, outs)
        if "flex" in outs and calls:
            _engine_choice(row, q, k, v, mask, log)
        row["ours_config"] = _tuned_config(ours_module) if "ours" in outs else None
        finish_row(row)
        on_row(row)
        outs.clear()
        ms, vs = row["ms"], row["speedup_vs_cudnn"]
        log(f"{label} density {density:g}: flex {fmt(ms.get('flex'), 3)} ms, ours {fmt(ms.get('ours'), 3)} ms "
            f"(ours {fmt(vs.get('ours'), 2, '×')} vs cuDNN, {fmt(row['speedup_vs_flex'].get('ours'), 2, '×')} vs "
            f"Flex), check {row['check']['ok']} err {fmt_error(row['check']['max_abs_err'])}"
            + "".join(f"; {b}: {e}" for b, e in row["error"].items()))  # fmt: skip


def hopper_calls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object, row: dict) -> dict[str, Callable]:
    """A call per installed `hopper` backend that takes these inputs; the others get their reason in row['error']."""
    from ...attention_processors.backend_choice import chooser

    calls = {}
    backends = chooser().backends
    for name in HOPPER_BACKENDS:
        backend = backends.get(name)
        if backend is None:
            continue
        why = backend.refusal(q, k, v, mask) if backend.available() else "not installed"
        if why is None:
            calls[name] = lambda backend=backend: backend.run(q, k, v, mask, None)[0]
        elif why != "not installed":
            row["error"][name] = f"refused: {why}"
            row["ms"][name] = None
    return calls


def _check_hopper(row: dict, outs: dict[str, torch.Tensor]) -> None:
    """Each `hopper` backend's output vs FlexAttention's, into row['checks'][name]."""
    for name in HOPPER_BACKENDS:
        if name not in outs or "flex" not in outs:
            continue
        max_abs, rel, ref_max = _compare(outs[name], outs["flex"])
        row.setdefault("checks", {})[name] = {"reference": "flex", "max_abs_err": max_abs, "rel_err": rel,
                                              "ok": within_tolerance(max_abs, rel, ref_max)}  # fmt: skip


def _engine_choice(row: dict, q, k, v, mask, log: Callable[[str], None]) -> None:
    """The backend the engine's measured choice (backend_choice.py) picks for this call, measured afresh (its cache
    in a temporary folder), and its time from this row (row['ms']['choice'])."""
    from ...attention_processors.backend_choice import BackendChooser, chooser

    with tempfile.TemporaryDirectory(prefix="unbottle-bench-choice-") as folder:
        fresh = BackendChooser(list(chooser().backends.values()), Path(folder) / "choice.json")
        try:
            _, order = fresh.order(q, k, v, mask, None)
        except Exception as e:  # noqa: BLE001 — recorded, the run goes on
            row["error"]["choice"] = error_text(e)
            return
        entry = next(iter(fresh.entries.values()))
    row["choice_measured_ms"] = {CHOOSER_NAMES.get(n, n): round(t, 4) for n, t in entry["ms"].items()}
    row["choice_failed"] = {CHOOSER_NAMES.get(n, n): why for n, why in entry["failed"].items()}
    if order:
        name = CHOOSER_NAMES.get(order[0], order[0])
        row["choice_backend"] = name
        row["ms"]["choice"] = row["ms"].get(name)
    log(f"{row['shape']} density {row['density']:g}: engine's choice {row.get('choice_backend')} "
        f"(its own times {row['choice_measured_ms']})")  # fmt: skip


def _check(row: dict, outs: dict[str, torch.Tensor], dense_out: torch.Tensor | None) -> None:
    """Our output vs FlexAttention's (vs dense SDPA where FlexAttention failed at density 1.0), into row['check']."""
    check = row["check"]
    if "ours" not in outs:  # its error is in row["error"]
        return
    try:
        ref_name, ref = ("flex", outs["flex"]) if "flex" in outs else ("sdpa", dense_out)
        ok = True
        if dense_out is not None:
            max_abs, rel, ref_max = _compare(outs["ours"], dense_out)
            check["max_abs_err_vs_dense"], check["rel_err_vs_dense"] = max_abs, rel
            ok = within_tolerance(max_abs, rel, ref_max)
            if "flex" in outs:
                flex_err = _compare(outs["flex"], dense_out)
                check["flex_max_abs_err_vs_dense"], check["flex_rel_err_vs_dense"] = flex_err[:2]
        if ref is None:
            check["error"] = "no reference output (FlexAttention failed), so ours is unchecked"
            return
        check["reference"] = ref_name
        check["max_abs_err"], check["rel_err"], check["ref_max_abs"] = _compare(outs["ours"], ref)
        check["ok"] = ok and within_tolerance(check["max_abs_err"], check["rel_err"], check["ref_max_abs"])
    except Exception as e:  # noqa: BLE001 — e.g. out of memory while comparing
        check["error"] = error_text(e)


def _environment(device: torch.device, command: str, options: BenchOptions) -> dict:
    """Versions, device and definitions: the JSON header."""
    return {
        **environment("attention", command, device, ("triton",), capability=True, cudnn=True),
        "dtype": "bfloat16", "batch": 1, "block_size": options.block_size, "seed": options.seed,
        "options": asdict(options), "check_tolerance": CHECK_TOLERANCE,
        "timing": TIMING_DEFINITION, "flops": FLOPS_DEFINITION,
        "mask": CALIBRATED_MASK_DEFINITION if options.budget == "calibrated" else MASK_DEFINITION,
        "backends": {
            "sdpa_cudnn": "F.scaled_dot_product_attention under sdpa_kernel(SDPBackend.CUDNN_ATTENTION), dense",
            "sdpa_flash": "F.scaled_dot_product_attention under sdpa_kernel(SDPBackend.FLASH_ATTENTION), dense",
            "flex": "torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=...), as the engine compiles it",
            "ours": "unbottle.attention_processors.kernels.block_sparse_attention_triton(q, k, v, block_mask, "
            "return_lse=False); Triton autotunes it once per (head size, block sizes), on the first call that meets "
            "them, as in the engine; each row's ours_config is the config in use",
            "cudnn_bsa": "cuDNN frontend's block_sparse_attention_forward (CuTe DSL, SM90 kernel) on the BlockMask's "
            "kept-tile lists with per-row counts, kv_splits=1, LSE returned (kernels/cudnn_bsa.py)",
            "fa4": "FlashAttention-4's flash_attn_func with block_sparse_tensors (full tiles), LSE returned "
            "(kernels/flash4.py)",
            "choice": "the backend the engine's measured choice picks for the row's call (measured afresh, its "
            "cache in a temporary folder); its time here is that backend's do_bench time from the same row",
        },
        "rows": [], "first_call": None, "targets": [],
    }  # fmt: skip


def run_benchmark(
    options: BenchOptions, out_dir: str | Path, command: str, device: str | torch.device = "cuda",
    timer: Callable[[Callable[[], object]], float] | None = None, log: Callable[[str], None] = measure.log,
) -> dict:  # fmt: skip
    """Measure everything; JSON and markdown are rewritten after each row (a cut-short run keeps its rows)."""
    from torch.nn.attention.flex_attention import flex_attention

    from ...attention_processors.kernels import block_sparse_fwd

    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = timer or median_ms
    dtype = torch.bfloat16
    results = _environment(device, command, options)
    start = time.perf_counter()
    with fresh_compile_caches(options.fresh_caches) as cache_root:
        results["compile_caches"] = cache_root or "the usual (warm) Triton/Inductor caches"
        # one compiled graph per shape, as the engine compiles it; leave room past dynamo's default recompile limit
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        flex = torch.compile(flex_attention, dynamic=False)
        ours = block_sparse_fwd.block_sparse_attention_triton
        _warm_up(device)
        if options.first_call:
            try:
                results["first_call"] = measure_first_call(flex, ours, options, device, dtype, block_sparse_fwd, log)
            except Exception as e:  # noqa: BLE001 — e.g. out of memory making the inputs: recorded, the run goes on
                results["first_call"] = {"error": error_text(e)}
                log(f"first call: {results['first_call']['error']}")
            free(device)
            write_outputs(results, out_dir)

        def on_row(row: dict) -> None:
            """Keep the row and rewrite the outputs."""
            results["rows"].append(row)
            results["targets"] = evaluate_targets(results["rows"], results["first_call"])
            write_outputs(results, out_dir)

        for shape in options.shapes:
            _measure_shape(shape, options, flex, ours, device, dtype, timer, log, on_row, block_sparse_fwd)
            free(device)  # the shape's inputs and outputs are gone with the call
    results["targets"] = evaluate_targets(results["rows"], results["first_call"])
    results["failed_checks"] = len(failed_checks(results))
    close_run(results, start, lambda r: write_outputs(r, out_dir, plot=options.plot, log=log), log)
    return results


def _warm_up(device: torch.device) -> None:
    """Start the CUDA context, cuBLAS and Triton's driver before anything is timed (none of it is a backend's cost)."""
    x = torch.randn(256, 256, device=device)
    (x @ x).sum().item()
    try:
        import triton

        triton.runtime.driver.active.get_current_device()
    except Exception:  # noqa: BLE001 — only a warm-up
        pass
    sync(device)


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench attention`: refuse without CUDA (UsageError, exit 2), run, and exit 1 if our check failed."""
    results = script.run_and_print(args, command, NO_CUDA_MESSAGE, options_from_args, run_benchmark,
                                   lambda r: f"attention-{r['gpu_tag']}.md")  # fmt: skip
    failed = failed_checks(results)
    if failed:
        where = ", ".join(f"{r['shape']}@{r['density']:g}" for r in failed)
        raise RunError(f"our kernel's output disagrees with FlexAttention on {len(failed)} config(s): {where}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of bench/attention.py: -o plus the shared options."""
    return script.build_parser(prog, __doc__.splitlines()[0], add_arguments)


def main(argv: list[str] | None = None, prog: str = "bench/attention.py") -> int:
    """Entry point of bench/attention.py; returns the exit code (2 without CUDA, 1 if our check failed)."""
    return script.script_main(argv, prog, build_parser(prog), run_from_cli)

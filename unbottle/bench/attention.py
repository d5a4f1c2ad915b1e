"""Attention benchmark (issue #5): dense SDPA (cuDNN, flash), compiled FlexAttention and our Triton block-sparse
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
import datetime
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention_processors.block_mask import num_blocks, pattern_to_block_mask
from ..attention_processors.patterns import select_blocks
from . import script

SHAPES: tuple[tuple[int, int, int], ...] = ((4608, 24, 128), (17776, 48, 64), (32760, 12, 128), (75600, 24, 128))
DENSITIES: tuple[float, ...] = (1.0, 0.25, 0.10, 0.05, 0.03)
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((4608, 24, 128), (32760, 12, 128))
QUICK_DENSITIES: tuple[float, ...] = (1.0, 0.10, 0.03)
BLOCK_SIZE = 128
# first-call latency: Wan2.1-1.3B-shaped heads (12 × 128) at 33 and 49 frames of 480×832 (9 and 13 latent frames of
# 30×52 tokens), lengths that no benchmarked shape uses, so both backends meet them fresh
FIRST_CALL_LENGTHS: tuple[int, int] = (14040, 20280)
FIRST_CALL_HEADS, FIRST_CALL_HEAD_DIM, FIRST_CALL_DENSITY = 12, 128, 0.10
# ours vs FlexAttention, bf16 outputs: relative (Frobenius) error, and max abs error over max(1, max |reference|)
# (bf16 keeps 8 significant bits: two valid outputs of magnitude m may differ by m/128)
CHECK_TOLERANCE = 2e-2
MIN_REPEATS = 10  # do_bench's repetition window is stretched so that slow calls still get this many timed runs
BACKENDS = ("sdpa_cudnn", "sdpa_flash", "flex", "ours")
LABELS = {"sdpa_cudnn": "cuDNN", "sdpa_flash": "flash", "flex": "Flex", "ours": "ours"}
# issue #5's targets: (density, backend, baseline, minimum speed-up)
TARGETS: tuple[tuple[float, str, str, float], ...] = (
    (0.10, "ours", "sdpa_cudnn", 8.0),
    (0.10, "ours", "flex", 1.25),
    (0.03, "ours", "sdpa_cudnn", 25.0),
    (1.0, "ours", "sdpa_cudnn", 0.9),
)
NO_CUDA_MESSAGE = "the attention benchmark needs a CUDA GPU; torch sees none here"
FLOPS_DEFINITION = (
    "useful forward FLOPs, FlashAttention-2 convention (Dao, 2023): 4·D per (query row, key) pair that a backend "
    "must compute (2·D for Q·Kᵀ, 2·D for P·V; softmax not counted). Block-sparse (flex, ours): the sum over heads "
    "and query blocks of 4 · rows(query block) · kept keys(row) · D, where rows and kept keys count real tokens "
    "(a partial last block counts its real length, padding is not counted). Dense SDPA: 4·H·N·N·D. TFLOP/s = "
    "these FLOPs / median time."
)
MASK_DEFINITION = (
    "per (head, query block): uniform random scores over the key blocks (seeded, drawn on the CPU, so the same on "
    "every device), then the engine's patterns.select_blocks with no forced blocks keeps the top "
    "ceil(density · n_key_blocks) of them (at least 1), listed in score order, shared by the batch; "
    "block_mask.pattern_to_block_mask turns the lists into a BlockMask (BlockMask.from_kv_blocks, every kept tile "
    "full, no mask_mod). The same seed at each density gives nested masks."
)
TIMING_DEFINITION = (
    "median of triton.testing.do_bench(fn, return_mode='median') (L2 flushed before each call; warm-up ≥ 25 ms, "
    f"repetition window ≥ 100 ms and ≥ {MIN_REPEATS} calls), after one untimed call that also compiles/autotunes. "
    "Dense SDPA is timed once per shape (it ignores the mask) and repeated in each density row. No backend returns "
    "the LSE here (FlexAttention return_lse=False, ours return_lse=False), as public SDPA does not."
)


@dataclass
class BenchOptions:
    """What to run: shapes (N, H, D), densities, block size, seed, and the first-call measurement."""

    shapes: list[tuple[int, int, int]] = field(default_factory=lambda: list(SHAPES))
    densities: list[float] = field(default_factory=lambda: list(DENSITIES))
    block_size: int = BLOCK_SIZE
    seed: int = 0
    first_call: bool = True
    first_call_lengths: tuple[int, ...] = FIRST_CALL_LENGTHS
    first_call_heads: int = FIRST_CALL_HEADS
    first_call_head_dim: int = FIRST_CALL_HEAD_DIM
    first_call_density: float = FIRST_CALL_DENSITY
    fresh_caches: bool = True
    plot: bool = True


# ---- arguments ----------------------------------------------------------------------------------------------------


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """`N×H×D` shapes, comma-separated (`x` or `×`), e.g. `4608x24x128,32760x12x128`."""
    shapes = []
    for part in text.split(","):
        fields = re.split(r"[x×]", part.strip().lower())
        try:
            shape = tuple(int(f) for f in fields)
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise argparse.ArgumentTypeError(f"--shapes takes N×H×D triples like 4608x24x128, got {part.strip()!r}")
        shapes.append(shape)
    return shapes


def parse_densities(text: str, option: str = "--densities") -> list[float]:
    """Block densities in (0, 1], comma-separated, e.g. `1,0.1,0.03`; errors name `option`."""
    densities = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes numbers in (0, 1], got {part.strip()!r}") from None
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise argparse.ArgumentTypeError(f"{option} takes numbers in (0, 1], got {value}")
        densities.append(value)
    return densities


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The attention benchmark's options (shared by `unbottle bench attention` and bench/attention.py)."""
    shapes = ",".join("x".join(map(str, s)) for s in SHAPES)
    quick = ",".join("x".join(map(str, s)) for s in QUICK_SHAPES)
    densities, quick_densities = ",".join(map(str, DENSITIES)), ",".join(map(str, QUICK_DENSITIES))
    parser.add_argument("--shapes", type=parse_shapes, metavar="NxHxD,...",
                        help=f"attention: shapes (default {shapes})")  # fmt: skip
    parser.add_argument("--densities", type=parse_densities, metavar="D,...",
                        help=f"attention: block densities (default {densities})")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help=f"attention: shapes {quick}, densities {quick_densities}")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="attention: seed of the inputs and masks (default 0)")
    parser.add_argument("--no-first-call", action="store_true", help="attention: skip the first-call latency")
    parser.add_argument("--warm-caches", action="store_true",
                        help="attention: keep the usual Triton/Inductor disk caches (default: fresh ones, so that "
                        "first calls include compilation)")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true", help="attention: no PNG plot")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """BenchOptions from parsed arguments: `--quick` picks a subset; explicit `--shapes`/`--densities` win."""
    quick = getattr(args, "quick", False)
    shapes = getattr(args, "shapes", None) or list(QUICK_SHAPES if quick else SHAPES)
    densities = getattr(args, "densities", None) or list(QUICK_DENSITIES if quick else DENSITIES)
    return BenchOptions(
        shapes=shapes, densities=densities, seed=getattr(args, "seed", 0),
        first_call=not getattr(args, "no_first_call", False), fresh_caches=not getattr(args, "warm_caches", False),
        plot=not getattr(args, "no_plot", False),
    )  # fmt: skip


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


# ---- results: ratios, targets, markdown, plot ---------------------------------------------------------------------


def finish_row(row: dict) -> dict:
    """Add TFLOP/s (row FLOPs / median ms) and speed-ups vs cuDNN dense and vs FlexAttention (baseline ms / ms)."""
    ms = row["ms"]
    work = {"sdpa_cudnn": row["dense_flops"], "sdpa_flash": row["dense_flops"], "flex": row["flops"],
            "ours": row["flops"]}  # fmt: skip
    row["tflops"] = {b: (work[b] / (ms[b] * 1e-3) / 1e12 if ms.get(b) else None) for b in BACKENDS}

    def ratios(base: str) -> dict[str, float | None]:
        """Baseline ms / backend ms for every other backend."""
        ref = ms.get(base)
        return {b: (ref / ms[b] if ref and ms.get(b) else None) for b in BACKENDS if b != base}

    row["speedup_vs_cudnn"] = ratios("sdpa_cudnn")
    row["speedup_vs_flex"] = ratios("flex")
    return row


def evaluate_targets(rows: list[dict], first_call: dict | None) -> list[dict]:
    """Issue #5's targets per measured shape; `met` is None where a time is missing, False where our check failed."""
    out = []
    for row in rows:
        for density, backend, base, minimum in TARGETS:
            if not math.isclose(row["density"], density):
                continue
            key = "speedup_vs_cudnn" if base == "sdpa_cudnn" else "speedup_vs_flex"
            value = row[key].get(backend)
            check_ok = row["check"]["ok"]
            met = None if value is None else (value >= minimum and check_ok is not False)
            out.append({
                "shape": row["shape"], "density": density, "what": f"{LABELS[backend]} vs {LABELS[base]}",
                "target": minimum, "value": value, "met": met, "check_ok": check_ok,
            })  # fmt: skip
    if first_call and first_call.get("ours_recompiled_on_second_length") is not None:
        recompiled = first_call["ours_recompiled_on_second_length"]
        out.append({"shape": None, "density": None, "what": "ours: no recompilation for a new sequence length",
                    "target": "no recompilation", "value": "recompiled" if recompiled else "no recompilation",
                    "met": not recompiled, "check_ok": None})  # fmt: skip
    return out


def failed_checks(results: dict) -> list[dict]:
    """Rows where our kernel's output disagreed with the reference (check ok is False)."""
    return [r for r in results.get("rows", []) if r["check"]["ok"] is False]


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for the table, or — when missing."""
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _fmt_err(value: float | str | None) -> str:
    """An error magnitude for the table (NaN arrives as a string from JSON round-trips)."""
    if value is None:
        return "—"
    return value if isinstance(value, str) else f"{value:.1e}"


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, one table row per (shape, density), targets, first-call latency, errors."""
    tol = results.get("check_tolerance", CHECK_TOLERANCE)
    lines = [
        f"# Attention benchmark, {results.get('gpu', '?')} (bf16, batch 1, {results.get('block_size')}-token blocks)",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, triton {results.get('triton')}, CUDA {results.get('cuda')}, cuDNN "
        f"{results.get('cudnn')}; {results.get('started', '')}",
        "",
        f"- time: {TIMING_DEFINITION}",
        f"- TFLOP/s: {FLOPS_DEFINITION}",
        f"- masks: {MASK_DEFINITION}",
        f"- check: ours vs FlexAttention output on each config (at density 1 also vs dense SDPA); ✗ when the "
        f"relative error > {tol} or the max abs error > {tol} · max(1, max |reference|); a ✗ time is not valid",
        "",
    ]
    failed = failed_checks(results)
    if failed:
        lines += [f"**ours FAILED the correctness check on {len(failed)} config(s): those times are not valid.**", ""]
    lines += [
        "| N × H × D | density (kept/row) | cuDNN ms | flash ms | Flex ms | ours ms | cuDNN TFLOP/s | Flex TFLOP/s | "
        "ours TFLOP/s | ours vs cuDNN | ours vs Flex | Flex vs cuDNN | ours − Flex max abs err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: dict[tuple[str, str, str], list[str]] = {}  # (shape, backend, error) -> densities
    for row in results.get("rows", []):
        ms = {b: (_fmt(row["ms"].get(b)) if b not in row["error"] else "error") for b in BACKENDS}
        if row["check"]["ok"] is False:
            ms["ours"] += " ✗"
        errors = dict(row["error"])
        if row["check"].get("error"):
            errors["check"] = row["check"]["error"]
        for b, err in errors.items():
            notes.setdefault((row["shape"], LABELS.get(b, b), err), []).append(f"{row['density']:g}")
        tf, vc, vf = row["tflops"], row["speedup_vs_cudnn"], row["speedup_vs_flex"]
        lines.append(
            f"| {row['shape']} | {row['density']:g} ({row['kept_blocks_per_row']}/{row['n_blocks']}) | "
            f"{ms['sdpa_cudnn']} | {ms['sdpa_flash']} | {ms['flex']} | {ms['ours']} | {_fmt(tf['sdpa_cudnn'], 0)} | "
            f"{_fmt(tf['flex'], 0)} | {_fmt(tf['ours'], 0)} | {_fmt(vc['ours'], 2, '×')} | {_fmt(vf['ours'], 2, '×')} "
            f"| {_fmt(vc['flex'], 2, '×')} | {_fmt_err(row['check']['max_abs_err'])} |"
        )
    targets = results.get("targets") or []
    if targets:
        lines += ["", "## Targets (issue #5)", "", "| shape | density | what | target | reached | met |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for t in targets:
            value = t["value"]
            reached = _fmt(value, 2, "×") if isinstance(value, float) else ("—" if value is None else str(value))
            target = f"≥ {t['target']}×" if isinstance(t["target"], float) else t["target"]
            met = {True: "yes", False: "no", None: "—"}[t["met"]]
            density = "—" if t["density"] is None else f"{t['density']:g}"
            lines.append(f"| {t['shape'] or '—'} | {density} | {t['what']} | {target} | {reached} | {met} |")
    first = results.get("first_call")
    if first and first.get("error"):
        lines += ["", "## First call on fresh sequence lengths", "", f"not measured: {first['error']}"]
    elif first:
        lines += [
            "", f"## First call on fresh sequence lengths ({first['heads']} heads × {first['head_dim']}, density "
            f"{first['density']:g}; compile caches {'fresh' if first.get('fresh_caches') else 'warm'})", "",
            "| backend | N | first call ms | warm call ms | error |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for backend in ("ours", "flex"):
            for e in first.get(backend, []):
                lines.append(f"| {LABELS[backend]} | {e['n']} | {_fmt(e['first_call_ms'], 1)} | "
                             f"{_fmt(e['warm_call_ms'], 3)} | {e['error'] or ''} |")  # fmt: skip
        lines += ["", f"ours compiled again for the second length: {first.get('ours_recompiled_on_second_length')} "
                  f"(compiled kernel variants after each length: {first.get('ours_kernel_variants')}); FlexAttention "
                  f"compiled again: {first.get('flex_recompiled_on_second_length')} (dynamo graphs after each "
                  f"length: {first.get('flex_graphs')}). {first.get('note', '')}"]  # fmt: skip
    if notes:
        lines += ["", "## Errors", ""]
        for (shape, backend, err), densities in notes.items():
            lines.append(f"- {shape}, {backend} (density {', '.join(densities)}): {err}")
    return "\n".join(lines) + "\n"


def write_plot(results: dict, path: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """Median time against density per shape (log–log), one panel per shape; None (with a note) without matplotlib."""
    log = log or _log
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib is not importable here, so no plot was written (the JSON and markdown hold the data)")
        return None
    shapes = list(dict.fromkeys(r["shape"] for r in results.get("rows", [])))
    if not shapes:
        return None
    cols = min(2, len(shapes))
    nrows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.2 * nrows), squeeze=False)
    styles = {"sdpa_cudnn": "--", "sdpa_flash": ":", "flex": "-o", "ours": "-s"}
    for ax, shape in zip(axes.flat, shapes, strict=False):
        rows = sorted((r for r in results["rows"] if r["shape"] == shape), key=lambda r: r["density"])
        for backend in BACKENDS:
            pts = [(r["density"], r["ms"][backend]) for r in rows if r["ms"].get(backend)]
            if pts:
                ax.plot(*zip(*pts, strict=True), styles[backend], label=LABELS[backend])
        bad = [(r["density"], r["ms"]["ours"]) for r in rows if r["check"]["ok"] is False and r["ms"].get("ours")]
        if bad:
            ax.plot(*zip(*bad, strict=True), "rx", markersize=12, label="ours: check failed")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("block density")
        ax.set_ylabel("median ms")
        ax.set_title(f"N×H×D = {shape}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(shapes) :]:
        ax.axis("off")
    fig.suptitle(f"Attention, {results.get('gpu', '?')}, bf16, {results.get('block_size')}-token blocks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gpu_tag(name: str) -> str:
    """A file-name tag from a device name: 'NVIDIA H200' → 'h200', 'NVIDIA H100 80GB HBM3' → 'h100-80gb-hbm3'."""
    tag = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", tag).strip("-") or "gpu"


def write_outputs(results: dict, out_dir: Path, plot: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Write attention-<gpu>.json and .md (and the .png plot when `plot`); return {kind: path}."""
    out_dir = Path(out_dir)
    stem = f"attention-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    paths = script.write_json_and_markdown(results, out_dir, stem, markdown_report(results))
    if plot:
        png = write_plot(results, out_dir / f"{stem}.png", log=log)
        if png is not None:
            paths["png"] = png
    return paths


# ---- measuring ----------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    """Progress on stderr, flushed (a run cut short by a time limit still shows how far it got)."""
    print(message, file=sys.stderr, flush=True)


def _error_text(e: BaseException, caught: list | None = None) -> str:
    """One line: the exception's type and last message line, plus the warnings caught with it (SDPA says why there)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[-1] if lines else ''}".strip()
    reasons = [str(w.message).strip().splitlines()[0] for w in caught or [] if str(w.message).strip()]
    if reasons:
        text += f" [{' '.join(dict.fromkeys(reasons))}]"
    return text[:600]


def _sync(device: torch.device) -> None:
    """Wait for the GPU (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
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


def _inputs(n: int, heads: int, head_dim: int, seed: int, device: torch.device, dtype: torch.dtype):
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
        q, k, v = _inputs(n, h, d, options.seed, device, dtype)
        indices, counts = random_block_pattern(n, h, density, bs, options.seed, device)
        prepared.append((n, q, k, v, pattern_to_block_mask(indices, counts, bs, n, n)))
    _sync(device)
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
                entry["error"] = _error_text(e, caught)
            result[name].append(entry)
            log(f"first call {name} N={n}: {_fmt(entry['first_call_ms'], 1)} ms, warm "
                f"{_fmt(entry['warm_call_ms'], 3)} ms{' ' + entry['error'] if entry['error'] else ''}")  # fmt: skip
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
        q, k, v = _inputs(n, h, d, options.seed, device, dtype)  # (1, H, N, D) each
    except Exception as e:  # noqa: BLE001 — e.g. out of memory: every row of this shape records it
        error = _error_text(e)
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
                _sync(device)
                dense_ms[name] = timer(lambda: F.scaled_dot_product_attention(q, k, v))
            if dense_out is None:
                dense_out = out
        except Exception as e:  # noqa: BLE001 — a head size or length the backend refuses, out of memory
            dense_err[name] = _error_text(e, caught)
        del out  # this backend's output (the first one lives on as dense_out)
        _free(device)
        log(f"{label} dense {LABELS[name]}: {_fmt(dense_ms[name], 3)} ms {dense_err.get(name, '')}")
    for density in options.densities:
        row: dict = {
            "shape": label, "n": n, "heads": h, "head_dim": d, "batch": 1, "density": density,
            "block_size": bs, "n_blocks": num_blocks(n, bs), "kept_blocks_per_row": None, "actual_density": None,
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
        except Exception as e:  # noqa: BLE001 — the mask could not be built: both sparse backends lack it
            calls = {}
            row["error"].update({"flex": f"mask: {_error_text(e)}", "ours": f"mask: {_error_text(e)}"})
            row["ms"].update({"flex": None, "ours": None})
        for name, call in calls.items():
            row["ms"][name] = None
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    outs[name] = call()  # compiles / autotunes on first use
                    _sync(device)
                    row["ms"][name] = timer(call)
            except Exception as e:  # noqa: BLE001 — recorded in the row, the run goes on
                row["error"][name] = _error_text(e, caught)
                _free(device)
        _check(row, outs, dense_out if density == 1.0 else None)
        row["ours_config"] = _tuned_config(ours_module) if "ours" in outs else None
        finish_row(row)
        on_row(row)
        outs.clear()
        ms, vs = row["ms"], row["speedup_vs_cudnn"]
        log(f"{label} density {density:g}: flex {_fmt(ms.get('flex'), 3)} ms, ours {_fmt(ms.get('ours'), 3)} ms "
            f"(ours {_fmt(vs.get('ours'), 2, '×')} vs cuDNN, {_fmt(row['speedup_vs_flex'].get('ours'), 2, '×')} vs "
            f"Flex), check {row['check']['ok']} err {_fmt_err(row['check']['max_abs_err'])}"
            + "".join(f"; {b}: {e}" for b, e in row["error"].items()))  # fmt: skip


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
        check["error"] = _error_text(e)


def _free(device: torch.device) -> None:
    """Return cached blocks to the GPU between backends and shapes; never raises (a broken context stays broken)."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def _git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit, "+dirty" when tracked files differ from it (the code that ran is not that commit), or
    None where there is no git repository (e.g. a copied working tree)."""
    try:
        root = root if root is not None else Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True, timeout=30)
        return out.stdout.strip() + ("+dirty" if diff.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _environment(device: torch.device, command: str, options: BenchOptions) -> dict:
    """Versions, device and definitions: the JSON header."""
    import triton

    from .. import __version__

    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else f"{device.type} ({platform.processor() or 'cpu'})"
    return {
        "benchmark": "attention (issue #5)", "command": command, "argv": sys.argv, "gpu": gpu, "gpu_tag": gpu_tag(gpu),
        "capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
        "unbottle": __version__, "git_commit": _git_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "bfloat16", "batch": 1, "block_size": options.block_size, "seed": options.seed,
        "options": asdict(options), "check_tolerance": CHECK_TOLERANCE,
        "timing": TIMING_DEFINITION, "flops": FLOPS_DEFINITION, "mask": MASK_DEFINITION,
        "backends": {
            "sdpa_cudnn": "F.scaled_dot_product_attention under sdpa_kernel(SDPBackend.CUDNN_ATTENTION), dense",
            "sdpa_flash": "F.scaled_dot_product_attention under sdpa_kernel(SDPBackend.FLASH_ATTENTION), dense",
            "flex": "torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=...), as the engine compiles it",
            "ours": "unbottle.attention_processors.kernels.block_sparse_attention_triton(q, k, v, block_mask, "
            "return_lse=False); Triton autotunes it once per (head size, block sizes), on the first call that meets "
            "them, as in the engine; each row's ours_config is the config in use",
        },
        "rows": [], "first_call": None, "targets": [],
    }  # fmt: skip


def run_benchmark(
    options: BenchOptions, out_dir: str | Path, command: str, device: str | torch.device = "cuda",
    timer: Callable[[Callable[[], object]], float] | None = None, log: Callable[[str], None] = _log,
) -> dict:  # fmt: skip
    """Measure everything; JSON and markdown are rewritten after each row (a cut-short run keeps its rows)."""
    from torch.nn.attention.flex_attention import flex_attention

    from ..attention_processors.kernels import block_sparse_fwd

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
                results["first_call"] = {"error": _error_text(e)}
                log(f"first call: {results['first_call']['error']}")
            _free(device)
            write_outputs(results, out_dir)

        def on_row(row: dict) -> None:
            """Keep the row and rewrite the outputs."""
            results["rows"].append(row)
            results["targets"] = evaluate_targets(results["rows"], results["first_call"])
            write_outputs(results, out_dir)

        for shape in options.shapes:
            _measure_shape(shape, options, flex, ours, device, dtype, timer, log, on_row, block_sparse_fwd)
            _free(device)  # the shape's inputs and outputs are gone with the call
    results["targets"] = evaluate_targets(results["rows"], results["first_call"])
    results["failed_checks"] = len(failed_checks(results))
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    paths = write_outputs(results, out_dir, plot=options.plot, log=log)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
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
    _sync(device)


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench attention`: refuse without CUDA (UsageError, exit 2), run, and exit 1 if our check failed."""
    from ..cli.errors import RunError

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

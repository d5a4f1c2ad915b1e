"""What the attention benchmark runs: shapes, densities, block size, the first-call measurement, the check tolerance,
the targets, the definitions its reports state, and its command-line options."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

from ..script import parse_densities

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
HOPPER_BACKENDS = ("cudnn_bsa", "fa4")  # the `hopper` extra's kernels, where installed
BACKENDS = ("sdpa_cudnn", "sdpa_flash", "flex", "ours", *HOPPER_BACKENDS, "choice")
SPARSE_BACKENDS = ("flex", "ours", *HOPPER_BACKENDS, "choice")
LABELS = {"sdpa_cudnn": "cuDNN", "sdpa_flash": "flash", "flex": "Flex", "ours": "ours", "cudnn_bsa": "cuDNN BSA",
          "fa4": "FA4", "choice": "engine's choice"}  # fmt: skip
CHOOSER_NAMES = {"triton": "ours"}  # backend_choice's names → this benchmark's
# the targets: (density, backend, baseline, minimum speed-up)
TARGETS: tuple[tuple[float, str, str, float], ...] = (
    (0.10, "ours", "sdpa_cudnn", 8.0),
    (0.10, "ours", "flex", 1.25),
    (0.03, "ours", "sdpa_cudnn", 25.0),
    (1.0, "ours", "sdpa_cudnn", 0.9),
    (0.10, "choice", "sdpa_cudnn", 8.0),
    (0.10, "choice", "flex", 1.25),
    (0.03, "choice", "sdpa_cudnn", 25.0),
    (1.0, "choice", "sdpa_cudnn", 0.9),
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
CALIBRATED_MASK_DEFINITION = (
    "calibrated budgets, as `SparseAttentionConfig(coverage=...)` keeps them: per head h of H, softmax masses over "
    "the key blocks of each query block from seeded normal logits scaled by a temperature log-spaced from 0.5 (head "
    "0, diffuse) to 4 (head H − 1, peaked); the engine's patterns.select_by_coverage keeps, per row, the fewest "
    "blocks whose mass reaches one coverage, found by bisection so that the mean kept fraction is the uniform "
    "budget's ceil(density · n_key_blocks) / n_key_blocks (so both spend about the same tiles; the row's "
    "actual_density says how close). Counts differ per head and row (kept/row shows the most)."
)
BUDGETS = ("uniform", "calibrated")
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
    budget: str = "uniform"  # "uniform": the same count per row; "calibrated": counts per row by softmax coverage


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The attention benchmark's options (`unbottle bench attention` and bench/attention.py)."""
    shapes = ",".join("x".join(map(str, s)) for s in SHAPES)
    quick = ",".join("x".join(map(str, s)) for s in QUICK_SHAPES)
    densities, quick_densities = ",".join(map(str, DENSITIES)), ",".join(map(str, QUICK_DENSITIES))
    parser.add_argument("--shapes", type=parse_shapes, metavar="NxHxD,...", help=f"shapes (default {shapes})")
    parser.add_argument("--densities", type=parse_densities, metavar="D,...",
                        help=f"block densities (default {densities})")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"shapes {quick}, densities {quick_densities}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and masks (default 0)")
    parser.add_argument("--no-first-call", action="store_true", help="skip the first-call latency")
    parser.add_argument("--warm-caches", action="store_true",
                        help="keep the usual Triton/Inductor disk caches (default: fresh ones, so that first calls "
                        "include compilation)")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true", help="no PNG plot")
    parser.add_argument("--budget", choices=BUDGETS, default="uniform",
                        help="masks: the same kept count per row (uniform, default) or counts per row by softmax "
                        "coverage at the same mean (calibrated)")  # fmt: skip


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """BenchOptions from parsed arguments: `--quick` picks a subset; explicit `--shapes`/`--densities` win."""
    quick = getattr(args, "quick", False)
    shapes = getattr(args, "shapes", None) or list(QUICK_SHAPES if quick else SHAPES)
    densities = getattr(args, "densities", None) or list(QUICK_DENSITIES if quick else DENSITIES)
    return BenchOptions(
        shapes=shapes, densities=densities, seed=getattr(args, "seed", 0),
        first_call=not getattr(args, "no_first_call", False), fresh_caches=not getattr(args, "warm_caches", False),
        plot=not getattr(args, "no_plot", False), budget=getattr(args, "budget", "uniform"),
    )  # fmt: skip

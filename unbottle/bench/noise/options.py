"""What the noise-search benchmark runs (CARINOX / ReNO reward-guided noise optimization): the NoiseSearch settings
(rows), image size, warm-up and timed iterations, the targets, and its command-line options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ...errors import UsageError
from ..script import parse_names

NO_CUDA_MESSAGE = "the noise-search benchmark needs a CUDA GPU; torch sees none here"
PROMPT = "a photo of a red cube on a blue sphere"  # words the offline tokenizer spells as whole tokens
REWARD_WEIGHTS: dict[str, float] = {"hps": 5.0, "clip": 1.0}  # λ per reward (CARINOX / ReNO's HPS-heavy mix)
TARGET_S_PER_IT, TARGET_PEAK_GB = 0.25, 12.0  # the targets
RENO_A100 = {"s_per_it": 0.4, "peak_gb": 15.0}  # ReNO's reported SD-Turbo numbers on an A100
SIZE, ITERATIONS, WARMUP, PLAIN_REPEATS, ROW_BUDGET_S = 512, 5, 2, 3, 30.0
QUICK_ITERATIONS, QUICK_WARMUP, QUICK_PLAIN_REPEATS = 2, 1, 1
# variant → NoiseSearch flags (four rows: one run still fits a short GPU lease)
VARIANTS: dict[str, dict[str, bool]] = {
    "autograd": {"gradient_checkpointing": False, "batched_vjp": False, "compile": False},
    "checkpointing": {"gradient_checkpointing": True, "batched_vjp": False, "compile": False},
    "batched-vjp": {"gradient_checkpointing": False, "batched_vjp": True, "compile": False},
    "compiled": {"gradient_checkpointing": False, "batched_vjp": False, "compile": True},
}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
TIMING_DEFINITION = (
    "seconds per optimization iteration: wall time (time.perf_counter, CUDA synchronized before and after) of each "
    "NoiseSearch gradient step (differentiable generation, both rewards forward + backward, the per-reward "
    "pullbacks, clipping), summed over the timed iterations and divided by their number, after the warm-up "
    "iterations of the same search; the SGD step on the noise between steps is not included. Peak: "
    "torch.cuda.max_memory_allocated over the timed iterations (weights included). Plain generation: one stock "
    "pipe(...) call (no grad, prompt encoding included), median of the repeats after a warm-up."
)


@dataclass
class NoiseOptions:
    """What to run (CARINOX / ReNO noise search): variants, image size, warm-up and timed iterations, seed, budget."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    size: int = SIZE
    iterations: int = ITERATIONS  # timed optimization iterations per row
    warmup: int = WARMUP  # untimed optimization iterations before them, same search
    plain_repeats: int = PLAIN_REPEATS
    seed: int = 0
    quick: bool = False
    row_budget_s: float = ROW_BUDGET_S  # a row stops after the iteration that crosses it (≥ 1 timed iteration)


def parse_variants(text: str) -> list[str]:
    """Variant names, comma-separated, from VARIANTS (NoiseSearch settings, CARINOX / ReNO)."""
    return parse_names(text, VARIANTS, "--variants")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The noise-search benchmark's options (CARINOX / ReNO)."""
    quick = f"{QUICK_WARMUP} warm-up + {QUICK_ITERATIONS} timed iterations, {QUICK_PLAIN_REPEATS} plain run"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--seed", type=int, default=0, help="the noise seed (default 0)")
    parser.add_argument("--size", type=int, default=SIZE, metavar="PX",
                        help=f"image height and width, a multiple of 64 (default {SIZE})")  # fmt: skip
    timed = f"timed iterations per row (default {ITERATIONS}; --quick {QUICK_ITERATIONS})"
    parser.add_argument("--iterations", type=int, metavar="K", help=timed)
    warmups = f"warm-up iterations per row (default {WARMUP}; --quick {QUICK_WARMUP})"
    parser.add_argument("--warmup-iterations", type=int, metavar="W", help=warmups)
    parser.add_argument("--variants", type=parse_variants, metavar="V,...",
                        help=f"rows to run, of {', '.join(VARIANTS)} (default all)")  # fmt: skip
    budget = f"seconds after which a row stops at its next iteration (default {ROW_BUDGET_S:g})"
    parser.add_argument("--row-budget", type=float, default=ROW_BUDGET_S, metavar="S", help=budget)


def options_from_args(args: argparse.Namespace) -> NoiseOptions:
    """NoiseOptions from parsed arguments (`unbottle bench noise` or bench/noise_search.py)."""
    quick = bool(getattr(args, "quick", False))
    size = getattr(args, "size", SIZE)
    iterations = getattr(args, "iterations", None)
    iterations = (QUICK_ITERATIONS if quick else ITERATIONS) if iterations is None else iterations
    warmup = getattr(args, "warmup_iterations", None)
    warmup = (QUICK_WARMUP if quick else WARMUP) if warmup is None else warmup
    budget = getattr(args, "row_budget", ROW_BUDGET_S)
    if size is None or size < 64 or size % 64:
        raise UsageError(f"--size must be a multiple of 64 (the UNet's 3 downsamplings of the /8 latents), got {size}")
    if iterations < 1:
        raise UsageError(f"--iterations must be ≥ 1, got {iterations}")
    if warmup < 0:
        raise UsageError(f"--warmup-iterations must be ≥ 0, got {warmup}")
    if budget is None or not budget > 0:
        raise UsageError(f"--row-budget must be > 0 seconds, got {budget}")
    return NoiseOptions(
        variants=getattr(args, "variants", None) or list(DEFAULT_VARIANTS), size=size, iterations=iterations,
        warmup=warmup, plain_repeats=QUICK_PLAIN_REPEATS if quick else PLAIN_REPEATS,
        seed=getattr(args, "seed", 0) or 0, quick=quick, row_budget_s=float(budget),
    )  # fmt: skip

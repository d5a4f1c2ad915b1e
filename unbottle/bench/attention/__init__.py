"""The attention benchmark: dense SDPA (cuDNN, flash), compiled FlexAttention and our Triton block-sparse kernel on the
same random block masks (`unbottle bench attention`, bench/attention.py; what is measured and how: run.py).

options.py: what to run and the command-line options; run.py: masks, FLOP counts, timing, the run; report.py: ratios,
targets, markdown, plot and files.
"""

from __future__ import annotations

from .options import (
    BLOCK_SIZE,
    CHECK_TOLERANCE,
    DENSITIES,
    NO_CUDA_MESSAGE,
    QUICK_DENSITIES,
    QUICK_SHAPES,
    SHAPES,
    TARGETS,
    BenchOptions,
    add_arguments,
    options_from_args,
    parse_shapes,
)
from .report import evaluate_targets, failed_checks, finish_row, markdown_report, write_outputs, write_plot
from .run import (
    block_lengths,
    build_parser,
    calibrated_block_pattern,
    computed_flops,
    dense_flops,
    main,
    measure_first_call,
    median_ms,
    random_block_pattern,
    random_qkv,
    run_benchmark,
    run_from_cli,
    within_tolerance,
)

__all__ = [
    "BLOCK_SIZE",
    "CHECK_TOLERANCE",
    "DENSITIES",
    "NO_CUDA_MESSAGE",
    "QUICK_DENSITIES",
    "QUICK_SHAPES",
    "SHAPES",
    "TARGETS",
    "BenchOptions",
    "add_arguments",
    "block_lengths",
    "build_parser",
    "computed_flops",
    "dense_flops",
    "evaluate_targets",
    "failed_checks",
    "finish_row",
    "main",
    "markdown_report",
    "measure_first_call",
    "median_ms",
    "options_from_args",
    "parse_shapes",
    "calibrated_block_pattern",
    "random_block_pattern",
    "random_qkv",
    "run_benchmark",
    "run_from_cli",
    "within_tolerance",
    "write_outputs",
    "write_plot",
]

"""The diffusion-LM benchmark: LLaDA-8B-shaped masked-diffusion generation, dense SDPA vs SparseD on FlexAttention and
on our Triton kernel (`unbottle bench dlm`, bench/diffusion_lm.py; what is measured and how: run.py).

options.py: what to run and the command-line options; model.py: the LLaDA-8B shape and the step arithmetic; steps.py:
the kernel routing and the step driver; run.py: the rows and the run; report.py: ratios, composed times, the target,
markdown and files.
"""

from __future__ import annotations

from .model import (
    LAYERS,
    LLADA_8B,
    build_model,
    composed_seconds,
    llada_config,
    parameter_count,
    schedule_counts,
    sparse_config,
)
from .options import (
    CONTEXTS,
    DENSITIES,
    MODES,
    NO_CUDA_MESSAGE,
    DLMOptions,
    OptionError,
    add_arguments,
    options_from_args,
    parse_contexts,
    parse_gen_modes,
    parse_modes,
    parse_sections,
)
from .report import (
    composed_estimates,
    evaluate_target,
    failed_rows,
    finish,
    markdown_report,
    output_stem,
    write_outputs,
)
from .run import build_parser, main, run_benchmark, run_from_cli
from .steps import (
    SparseCalls,
    StepDriver,
    expected_kinds,
    kernel_route,
    prompt_ids,
    route_sparse_attention,
    sdpa_backend,
    step_kind_from_counts,
    triton_sparse_attention,
)

__all__ = [
    "CONTEXTS",
    "DENSITIES",
    "LAYERS",
    "LLADA_8B",
    "MODES",
    "NO_CUDA_MESSAGE",
    "DLMOptions",
    "OptionError",
    "SparseCalls",
    "StepDriver",
    "add_arguments",
    "build_model",
    "build_parser",
    "composed_estimates",
    "composed_seconds",
    "evaluate_target",
    "expected_kinds",
    "failed_rows",
    "finish",
    "kernel_route",
    "llada_config",
    "main",
    "markdown_report",
    "options_from_args",
    "output_stem",
    "parameter_count",
    "parse_contexts",
    "parse_gen_modes",
    "parse_modes",
    "parse_sections",
    "prompt_ids",
    "route_sparse_attention",
    "run_benchmark",
    "run_from_cli",
    "schedule_counts",
    "sdpa_backend",
    "sparse_config",
    "step_kind_from_counts",
    "triton_sparse_attention",
    "write_outputs",
]

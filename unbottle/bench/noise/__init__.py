"""The noise-search benchmark: seconds and peak memory per CARINOX / ReNO noise-optimization iteration of
`unbottle.NoiseSearch` on a random-weight SD-Turbo-shaped pipeline with two ViT-H-14 rewards (`unbottle bench noise`,
bench/noise_search.py; what is measured, what is real-size and what is not: run.py).

options.py: the rows and the command-line options; models.py: the real-size pipeline and rewards; run.py: the plain
baseline, the timed searches, the run; report.py: markdown and files.
"""

from __future__ import annotations

from .models import (
    OPENCLIP_H_TEXT,
    REWARD_MODEL,
    SD21_UNET,
    SD_TURBO_SCHEDULER,
    SD_VAE,
    Models,
    build_pipeline,
    build_rewards,
    register_open_clip,
)
from .options import (
    DEFAULT_VARIANTS,
    NO_CUDA_MESSAGE,
    PROMPT,
    REWARD_WEIGHTS,
    VARIANTS,
    NoiseOptions,
    add_arguments,
    options_from_args,
    parse_variants,
)
from .report import markdown_report, output_stem, write_outputs
from .run import build_parser, main, make_search, measure_plain, measure_variant, run_benchmark, run_from_cli

__all__ = [
    "DEFAULT_VARIANTS",
    "NO_CUDA_MESSAGE",
    "OPENCLIP_H_TEXT",
    "PROMPT",
    "REWARD_MODEL",
    "REWARD_WEIGHTS",
    "SD21_UNET",
    "SD_TURBO_SCHEDULER",
    "SD_VAE",
    "VARIANTS",
    "Models",
    "NoiseOptions",
    "add_arguments",
    "build_parser",
    "build_pipeline",
    "build_rewards",
    "main",
    "make_search",
    "markdown_report",
    "measure_plain",
    "measure_variant",
    "options_from_args",
    "output_stem",
    "parse_variants",
    "register_open_clip",
    "run_benchmark",
    "run_from_cli",
    "write_outputs",
]

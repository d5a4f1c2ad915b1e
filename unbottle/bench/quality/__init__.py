"""The quality benchmark on the shapes text-to-image model: the evaluator's accuracy and the fidelity to the stock
output of sparse attention, bottleneck sampling, structured guidance and noise search (`unbottle bench quality`, CPU
or GPU; what is compared and how: run.py).

options.py: the settings and the command-line options; run.py: generation, scoring, the run; report.py: markdown and
files.
"""

from __future__ import annotations

from .options import HELD_OUT_SEED, QualityOptions, add_arguments, parse_noise_search
from .report import markdown_report, write_outputs
from .run import fact_accuracy, generate, held_out_captions, noise_search_rows, psnr, run_from_cli, run_quality

__all__ = [
    "HELD_OUT_SEED",
    "QualityOptions",
    "add_arguments",
    "fact_accuracy",
    "generate",
    "held_out_captions",
    "markdown_report",
    "noise_search_rows",
    "parse_noise_search",
    "psnr",
    "run_from_cli",
    "run_quality",
    "write_outputs",
]

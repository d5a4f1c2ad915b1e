"""The quality benchmark on the shapes text-to-image model: the evaluator's accuracy and the fidelity to the stock
output of sparse attention, bottleneck sampling, structured guidance and noise search (`unbottle bench quality`, CPU
or GPU; what is compared and how: run.py), and of sparse attention on its clips (`--video`; video.py).

options.py: the settings and the command-line options; run.py: image generation, scoring, the run; video.py: the
same on clips; scores.py: PSNR and fact accuracy; report.py: markdown and files.
"""

from __future__ import annotations

from .options import (
    HELD_OUT_SEED,
    VIDEO_HELD_OUT_SEED,
    QualityOptions,
    SparseSetting,
    VideoQualityOptions,
    add_arguments,
    parse_noise_search,
)
from .report import markdown_report, markdown_video_report, write_outputs
from .run import generate, held_out_captions, noise_search_rows, run_from_cli, run_quality
from .scores import fact_accuracy, psnr
from .video import generate_clips, held_out_video_captions, run_video_quality

__all__ = [
    "HELD_OUT_SEED",
    "VIDEO_HELD_OUT_SEED",
    "QualityOptions",
    "SparseSetting",
    "VideoQualityOptions",
    "add_arguments",
    "fact_accuracy",
    "generate",
    "generate_clips",
    "held_out_captions",
    "held_out_video_captions",
    "markdown_report",
    "markdown_video_report",
    "noise_search_rows",
    "parse_noise_search",
    "psnr",
    "run_from_cli",
    "run_quality",
    "run_video_quality",
    "write_outputs",
]

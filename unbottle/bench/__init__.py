"""Benchmarks that ship with the package, so that the installed `unbottle bench SUITE -o DIR` runs them (and the
scripts in bench/ do the same from a checkout).

Each suite is a package: options.py (what to run, its command-line options), run.py (building and timing the workload,
the entry points; its docstring says what is measured and how), report.py (ratios, targets, markdown, files), and
model/models/steps modules where the workload needs them. What the suites share: script.py (entry points, shared
option parsers), measure.py (timing and device helpers), results.py (the JSON header, number format, files).
"""

# suite → what it measures (the CLI's help)
SUITES: dict[str, str] = {
    "attention": "block-sparse attention: dense SDPA (cuDNN, flash), FlexAttention and our Triton kernel (CUDA)",
    "e2e": "whole generations: stock vs Bottleneck Sampling, alone and with sparse attention, real-size (CUDA)",
    "quality": "accuracy and fidelity to stock of each method on the shapes model (CPU or GPU)",
    "noise": "reward-guided noise search: seconds and peak memory per iteration, SD-Turbo-shaped (CUDA)",
    "dlm": "diffusion LM: dense SDPA vs SparseD on LLaDA-8B shapes (CUDA)",
}

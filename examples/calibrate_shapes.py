"""Calibrated sparse attention on the embedded shapes model: a softmax-mass target (coverage) instead of a density.

    python examples/calibrate_shapes.py                                   # offline, CPU, about a minute
    python examples/calibrate_shapes.py --coverage 0.8 0.95 0.99 -o patterns

For each coverage: calibrate on a few prompts (each (layer, head, query block) row keeps the fewest key blocks holding
that share of its softmax mass; the prompts' kept tiles are united), print the realized density, then generate a
held-out prompt with the calibrated patterns loaded and print its PSNR against the dense image (same seed).
The command line does the calibration step too: `unbottle calibrate PROMPT... --coverage 0.95 -o patterns.safetensors`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

import unbottle
from unbottle.defaults import EMBEDDED, load_default

CALIBRATION = ("a red circle left of a blue square", "a green triangle above a yellow circle", "two blue squares")
HELD_OUT = "a yellow square right of a red triangle"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coverage", type=float, nargs="+", default=[0.8, 0.95, 0.99])
    parser.add_argument("--steps", type=int, default=EMBEDDED["image"].steps)
    parser.add_argument("-o", "--output", default="calibrated-patterns", help="folder for the pattern files")
    args = parser.parse_args()

    default = EMBEDDED["image"]
    pipe = load_default("image")
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=default.height, width=default.width, num_frames=default.frames, num_inference_steps=args.steps,
                guidance_scale=default.guidance_scale)  # fmt: skip

    def generate(prompt: str) -> np.ndarray:
        out = pipe(prompt, output_type="np", generator=torch.Generator().manual_seed(0), **call)
        return np.asarray(out.frames[0][0])  # (H, W, 3) in [0, 1]

    dense = generate(HELD_OUT)
    folder = Path(args.output)
    print(f"{'coverage':>8}  {'realized density':>16}  {'PSNR vs dense (dB)':>18}")
    for coverage in args.coverage:
        config = unbottle.SparseAttentionConfig(coverage=coverage, block_size=default.sparse_block_size)
        path = folder / f"coverage-{coverage}.safetensors"
        density = unbottle.calibrate_sparse_attention(
            pipe, CALIBRATION, coverage, path=path, config=config, output_type="latent",
            generator=torch.Generator().manual_seed(0), **call,
        )  # fmt: skip
        unbottle.enable_sparse_attention(pipe, config)
        try:
            unbottle.load_head_patterns(pipe, path)  # the calibrated patterns: none is computed while generating
            sparse = generate(HELD_OUT)
        finally:
            unbottle.disable_sparse_attention(pipe)
        print(f"{coverage:>8}  {density:>16.3f}  {psnr(sparse, dense):>18.2f}")


if __name__ == "__main__":
    main()

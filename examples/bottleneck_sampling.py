"""Bottleneck sampling (high → low → high resolution, Tian et al. 2025) on a stock pipeline, against the stock run.

    python examples/bottleneck_sampling.py                        # the shipped shapes model, offline, CPU, seconds
    python examples/bottleneck_sampling.py --sparse 0.3           # ... with sparse attention on the bottleneck run
    python examples/bottleneck_sampling.py --model flux           # FLUX.1-dev, flux-3x (needs the weights + a GPU)
    python examples/bottleneck_sampling.py --model wan            # Wan2.1-T2V-1.3B, wan-3x (needs the weights + a GPU)
    python examples/bottleneck_sampling.py --model sd3            # SD3-medium, sd3-2x against its 28 steps (likewise)

Prints the wall time of the stock run and of the bottleneck run (same seed), their ratio, the PSNR of the bottleneck
result against the stock one, and each stage's size and σ grid; saves both results as PNG (first frame for videos).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image

import unbottle
from unbottle.pipelines.resample import RESAMPLE_MODES

# hub models: (id, call arguments of the stock run, the preset to compare with)
MODELS = {
    "flux": ("black-forest-labs/FLUX.1-dev", dict(height=1024, width=1024, num_inference_steps=50), "flux-3x"),
    "wan": (
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        dict(height=480, width=832, num_frames=81, num_inference_steps=50),
        "wan-3x",
    ),
    "sd3": (
        "stabilityai/stable-diffusion-3-medium-diffusers",
        dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=7.0),
        "sd3-2x",
    ),
}
# the shapes model is trained for 20 steps at 128 px: a 3-stage list of ≈ 0.6 of its cost (not tuned yet)
SHAPES_STAGES = [
    unbottle.Stage(scale=1.0, steps=3, strength=1.0, shift=9.0),
    unbottle.Stage(scale=0.5, steps=10, strength=0.8, shift=6.0),
    unbottle.Stage(scale=1.0, steps=5, strength=0.6, shift=9.0),
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def first_image(out: object) -> np.ndarray:
    """(H, W, 3) in [0, 1]: the first image, or the first frame of the first video."""
    images = np.asarray(out.frames if hasattr(out, "frames") else out.images)
    return images[0, 0] if images.ndim == 5 else images[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), help="a hub model (default: the shipped shapes model)")
    parser.add_argument("--prompt", default="a red circle to the left of a blue square")
    parser.add_argument("--preset", help="a bottleneck preset (default: the model's, or a shapes stage list)")
    parser.add_argument("--resample", choices=RESAMPLE_MODES, default="bicubic-aa")
    parser.add_argument("--sparse", type=float, help="sparse attention at this density on the bottleneck run too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="bottleneck", help="prefix of the two PNG files written")
    args = parser.parse_args()

    if args.model is None:
        from unbottle.shapes import call_defaults, load_pipeline

        pipe, call = load_pipeline("t2i"), dict(call_defaults("t2i"))
        preset, block = args.preset, 16
    else:
        from diffusers import DiffusionPipeline

        model_id, call, preset = MODELS[args.model]
        pipe, block = DiffusionPipeline.from_pretrained(model_id, torch_dtype=torch.bfloat16).to("cuda"), 128
        preset = args.preset or preset
    if preset is not None:
        sampler = unbottle.BottleneckSampler.from_preset(pipe, preset, resample=args.resample)
    else:
        sampler = unbottle.BottleneckSampler(pipe, SHAPES_STAGES, resample=args.resample)

    def timed(fn, **kwargs) -> tuple[np.ndarray, float]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(args.prompt, output_type="np", generator=torch.Generator().manual_seed(args.seed), **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return first_image(out), time.perf_counter() - start

    pipe(args.prompt, **{**call, "num_inference_steps": 1})  # warm-up: first-call costs are not the method's
    stock, t_stock = timed(pipe, **call)
    if args.sparse is not None:  # the stock run stays dense: the ratio is the combined speedup
        unbottle.enable_sparse_attention(pipe, unbottle.SparseAttentionConfig(density=args.sparse, block_size=block))
    stage_call = {k: v for k, v in call.items() if k != "num_inference_steps"}  # the stages set their own steps
    ours, t_ours = timed(sampler, **stage_call)

    print(f"stock      {call.get('num_inference_steps')} steps: {t_stock:.2f} s")
    sparse = "" if args.sparse is None else f" + sparse attention at density {args.sparse}"
    steps = sum(s.steps for s in sampler.stages)
    print(f"bottleneck {steps} steps{sparse}: {t_ours:.2f} s ({t_stock / t_ours:.2f}×)")
    print(f"PSNR vs stock: {psnr(ours, stock):.2f} dB")
    for i, plan in enumerate(sampler.plan(call["height"], call["width"], call.get("num_frames"))):
        grid = "the pipeline's own" if plan.sigmas is None else ", ".join(f"{s:.3f}" for s in plan.sigmas)
        print(f"  stage {i}: {plan.width}×{plan.height}, {plan.stage.steps} steps, σ: {grid}")
    for name, image in (("stock", stock), ("bottleneck", ours)):
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(f"{args.output}-{name}.png")
    print(f"wrote {args.output}-stock.png and {args.output}-bottleneck.png")


if __name__ == "__main__":
    main()

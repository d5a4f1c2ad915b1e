"""Sparse attention (Re-ttention reshape + SparseD cached head patterns) on a stock pipeline, dense vs sparse.

    python examples/sparse_attention.py                       # embedded tiny Wan, offline, CPU, seconds
    python examples/sparse_attention.py --model wan           # Wan-AI/Wan2.1-T2V-1.3B-Diffusers (needs weights + GPU)
    python examples/sparse_attention.py --model flux          # black-forest-labs/FLUX.1-dev
    python examples/sparse_attention.py --model cogvideox     # THUDM/CogVideoX-2b
    python examples/sparse_attention.py --compile             # + transformer.compile_repeated_blocks(fullgraph=True)
    python examples/sparse_attention.py --model wan --compile --backend cudnn_bsa   # pip install "unbottle[hopper]"

Prints the wall time of both runs and the PSNR of the sparse result against the dense one (same seed), and saves the
head patterns it cached so a later run can skip computing them (`--patterns FILE`). With `--compile` the sparse run
is repeated with the denoiser's blocks compiled (Inductor on a GPU, aot_eager on the CPU), each block one graph around
unbottle's attention op, and its PSNR against the eager sparse run is printed too. On CUDA with the `hopper` extra
installed the engine times every block-sparse kernel once per call shape and runs the fastest (`--backend` forces one).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

import unbottle

MODELS = {
    "wan": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dict(height=480, width=832, num_frames=81, num_inference_steps=50)),
    "flux": ("black-forest-labs/FLUX.1-dev", dict(height=1024, width=1024, num_inference_steps=28)),
    "cogvideox": ("THUDM/CogVideoX-2b", dict(height=480, width=720, num_frames=49, num_inference_steps=50)),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), help="a hub model (default: the embedded tiny Wan)")
    parser.add_argument("--prompt", default="a red circle moves left of a blue square")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--pattern", choices=["cached", "dynamic", "window"], default="cached")
    parser.add_argument("--patterns", help="safetensors file to load head patterns from (if it exists) / save to")
    parser.add_argument("--compile", action="store_true", help="also run sparse with compile_repeated_blocks")
    parser.add_argument("--backend", choices=["auto", "triton", "flex", "cudnn_bsa", "fa4"],
                        help="block-sparse kernel on CUDA (default auto: measured per call shape)")
    args = parser.parse_args()
    if args.backend:
        os.environ["UNBOTTLE_SPARSE_BACKEND"] = args.backend

    if args.model is None:
        from unbottle.testing import tiny_wan_pipeline

        pipe, call, block = tiny_wan_pipeline(), dict(height=64, width=64, num_frames=9, num_inference_steps=8), 4
    else:
        from diffusers import DiffusionPipeline

        model_id, call = MODELS[args.model]
        pipe, block = DiffusionPipeline.from_pretrained(model_id, torch_dtype=torch.bfloat16).to("cuda"), 128

    def generate() -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        out = pipe(args.prompt, output_type="np", generator=torch.Generator().manual_seed(0), **call)
        images = out.frames if hasattr(out, "frames") else out.images
        return np.asarray(images), time.perf_counter() - start

    dense, t_dense = generate()
    config = unbottle.SparseAttentionConfig(density=args.density, pattern=args.pattern, block_size=block)
    handle = unbottle.enable_sparse_attention(pipe, config)
    if args.patterns and args.pattern == "cached":
        try:
            print(f"loaded {unbottle.load_head_patterns(pipe, args.patterns)} cached patterns")
        except FileNotFoundError:
            pass
    sparse, t_sparse = generate()
    print(f"dense {t_dense:.2f}s, sparse {t_sparse:.2f}s ({t_dense / t_sparse:.2f}×), PSNR {psnr(sparse, dense):.1f}")
    computed = sum(handle.pattern_computations.values())
    print(f"patterns computed this run: {computed} over {len(handle.layer_hooks)} layers")
    if args.compile:  # the blocks compile around the sparse processors: enable first, then compile
        handle.disable()
        handle = unbottle.enable_sparse_attention(pipe, config)
        backend = "inductor" if torch.cuda.is_available() else "aot_eager"
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend=backend)
        compiled, t_compiled = generate()  # compiles on the first steps
        print(f"sparse compiled ({backend}) {t_compiled:.2f}s including compilation, PSNR against sparse eager "
              f"{psnr(compiled, sparse):.1f}")
    if args.patterns and args.pattern == "cached":
        print(f"saved patterns to {unbottle.save_head_patterns(pipe, args.patterns)}")
    unbottle.disable_sparse_attention(pipe)


if __name__ == "__main__":
    main()

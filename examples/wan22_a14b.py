"""Wan2.2-T2V-A14B (two experts) with unbottle's sparse attention and Bottleneck Sampling (needs the weights + a GPU).

    python examples/wan22_a14b.py                         # sparse attention + wan22-3x (--mode both)
    python examples/wan22_a14b.py --mode stock            # the stock pipeline: 40 steps, 81 frames 480×832
    python examples/wan22_a14b.py --mode sparse --density 0.1
    python examples/wan22_a14b.py --mode bottleneck --cpu-offload

Loads Wan-AI/Wan2.2-T2V-A14B-Diffusers (WanPipeline: the high-noise expert `transformer`, the low-noise one
`transformer_2`) in bf16; `enable_sparse_attention(pipe)` puts sparse attention on both experts and returns a
`PipelineSparseAttention`. On one 80 GB card the sparse config uses reshape=False: Re-ttention's per-layer residual,
(B, H, N, D) per layer and CFG branch (335 MB at 81 frames 480p, 54 GB for both experts' 80 layers), does not fit
beside the weights. `--reshape` turns it on where the memory is there. --cpu-offload keeps one model on the GPU at a
time (pipe.enable_model_cpu_offload()).

Prints the wall time of each run (the whole call: text encoding, denoising, VAE decode) and writes the video as MP4.
The first sparse run compiles FlexAttention and computes the cached head patterns: `--repeats 2` times a second one.
"""

from __future__ import annotations

import argparse
import time

import torch

import unbottle

MODEL_ID = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
PRESET = "wan22-3x"  # set against the stock 40 steps
CALL = dict(height=480, width=832, num_frames=81, num_inference_steps=40, guidance_scale=4.0, guidance_scale_2=3.0)
FPS = 16
MODES = ("stock", "sparse", "bottleneck", "both")  # both: sparse attention on the bottleneck run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red fox runs through fresh snow in a pine forest, cinematic")
    parser.add_argument("--mode", choices=MODES, default="both")
    parser.add_argument("--density", type=float, default=0.05, help="sparse attention's block density")
    parser.add_argument("--reshape", action=argparse.BooleanOptionalAction, default=False,
                        help="Re-ttention's reshape on the sparse steps (its residual needs ≈ 54 GB here)")
    parser.add_argument("--cpu-offload", action="store_true", help="pipe.enable_model_cpu_offload() instead of .to()")
    parser.add_argument("--repeats", type=int, default=1, help="generations to time (the same seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="the MP4 written (default: wan22-MODE.mp4)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be ≥ 1, got {args.repeats}")
    try:  # checked before minutes of loading
        config = unbottle.SparseAttentionConfig(density=args.density, block_size=128, reshape=args.reshape)
    except ValueError as e:
        parser.error(f"--density: {e}")

    from diffusers import WanPipeline
    from diffusers.utils import export_to_video

    pipe = WanPipeline.from_pretrained(MODEL_ID, torch_dtype=torch.bfloat16)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to("cuda")
    call, generate = dict(CALL), pipe
    if args.mode in ("sparse", "both"):
        handle = unbottle.enable_sparse_attention(pipe, config)
        print(f"sparse attention on {', '.join(handle.handles)}: density {args.density}, reshape {args.reshape}")
    if args.mode in ("bottleneck", "both"):
        generate = unbottle.BottleneckSampler.from_preset(pipe, PRESET)
        del call["num_inference_steps"]  # the stages set their own steps
        steps = " + ".join(str(stage.steps) for stage in generate.stages)
        print(f"{PRESET}: {steps} steps against the stock {CALL['num_inference_steps']}")

    for i in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(prompt=args.prompt, generator=torch.Generator().manual_seed(args.seed), **call)
        torch.cuda.synchronize()
        print(f"{args.mode} run {i + 1}: {time.perf_counter() - start:.1f} s")
    output = args.output or f"wan22-{args.mode}.mp4"
    export_to_video(out.frames[0], output, fps=FPS)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

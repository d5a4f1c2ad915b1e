"""HunyuanVideo-1.5 720p with unbottle's sparse attention and Bottleneck Sampling (needs the weights + a GPU).

    python examples/hunyuan_video15.py                    # sparse attention + hunyuanvideo15-3x (--mode both)
    python examples/hunyuan_video15.py --mode stock       # the stock pipeline: 50 steps, 121 frames 720×1280
    python examples/hunyuan_video15.py --mode sparse --density 0.1
    python examples/hunyuan_video15.py --mode bottleneck --cpu-offload

Loads hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v (HunyuanVideo15Pipeline: an 8.3B transformer,
Qwen2.5-VL-7B + ByT5 text encoders; CFG through the pipeline's guider, two transformer calls per step) in bf16, with
VAE tiling for the 720p decode. The sparse config uses reshape=False by default: Re-ttention's residual, (B, H, N, D)
per layer and CFG branch, is ≈ 0.46 GB at 121 frames 720p (111,600 video tokens × 2048), ≈ 50 GB for 54 layers and
two branches, more than an 80 GB card holds beside the models. `--reshape` turns it on where the memory is there.
--cpu-offload keeps one model on the GPU at a time (pipe.enable_model_cpu_offload()).

Prints the wall time of each run (the whole call: text encoding, denoising, VAE decode) and writes the video as MP4.
The first sparse run compiles FlexAttention and computes the cached head patterns: `--repeats 2` times a second one.
"""

from __future__ import annotations

import argparse
import time

import torch

import unbottle

MODEL_ID = "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v"
PRESET = "hunyuanvideo15-3x"  # set against the stock 50 steps
CALL = dict(height=720, width=1280, num_frames=121, num_inference_steps=50)
FPS = 24
MODES = ("stock", "sparse", "bottleneck", "both")  # both: sparse attention on the bottleneck run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a paper boat drifts down a rain-filled gutter, close-up, cinematic")
    parser.add_argument("--mode", choices=MODES, default="both")
    parser.add_argument("--density", type=float, default=0.05, help="sparse attention's block density")
    parser.add_argument("--reshape", action=argparse.BooleanOptionalAction, default=False,
                        help="Re-ttention's reshape on the sparse steps (its residual needs ≈ 50 GB here)")
    parser.add_argument("--cpu-offload", action="store_true", help="pipe.enable_model_cpu_offload() instead of .to()")
    parser.add_argument("--repeats", type=int, default=1, help="generations to time (the same seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="the MP4 written (default: hunyuan-video15-MODE.mp4)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be ≥ 1, got {args.repeats}")
    try:  # checked before minutes of loading
        config = unbottle.SparseAttentionConfig(density=args.density, block_size=128, reshape=args.reshape)
    except ValueError as e:
        parser.error(f"--density: {e}")

    from diffusers import HunyuanVideo15Pipeline
    from diffusers.utils import export_to_video

    pipe = HunyuanVideo15Pipeline.from_pretrained(MODEL_ID, torch_dtype=torch.bfloat16)
    pipe.vae.enable_tiling()  # the 720p × 121-frame decode in tiles
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to("cuda")
    call, generate = dict(CALL), pipe
    if args.mode in ("sparse", "both"):
        unbottle.enable_sparse_attention(pipe, config)
        print(f"sparse attention: density {args.density}, reshape {args.reshape}")
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
    output = args.output or f"hunyuan-video15-{args.mode}.mp4"
    export_to_video(out.frames[0], output, fps=FPS)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

"""Qwen-Image with unbottle's sparse attention and Bottleneck Sampling (needs the weights + a GPU).

    python examples/qwen_image.py                         # sparse attention + qwenimage-2x (--mode both)
    python examples/qwen_image.py --mode stock            # the stock pipeline: 50 steps, 1328×1328, true CFG 4.0
    python examples/qwen_image.py --mode sparse --density 0.1
    python examples/qwen_image.py --mode bottleneck

Loads Qwen/Qwen-Image (QwenImagePipeline: a 20B MMDiT, Qwen2.5-VL-7B as text encoder) in bf16 and runs it with true
CFG (true_cfg_scale 4.0, negative prompt " "): two transformer calls per step, each CFG branch with its own sparse
attention state. --cpu-offload keeps one model on the GPU at a time (pipe.enable_model_cpu_offload()).

Prints the wall time of each run (the whole call: text encoding, denoising, VAE decode) and writes the image as PNG.
The first sparse run compiles FlexAttention and computes the cached head patterns: `--repeats 2` times a second one.
"""

from __future__ import annotations

import argparse
import time

import torch

import unbottle

MODEL_ID = "Qwen/Qwen-Image"
PRESET = "qwenimage-2x"  # set against the stock 50 steps
CALL = dict(height=1328, width=1328, num_inference_steps=50, true_cfg_scale=4.0, negative_prompt=" ")
MODES = ("stock", "sparse", "bottleneck", "both")  # both: sparse attention on the bottleneck run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default='a coffee shop sign that reads "unbottle", warm morning light, photo')
    parser.add_argument("--mode", choices=MODES, default="both")
    parser.add_argument("--density", type=float, default=0.05, help="sparse attention's block density")
    parser.add_argument("--reshape", action=argparse.BooleanOptionalAction, default=True,
                        help="Re-ttention's reshape on the sparse steps")
    parser.add_argument("--cpu-offload", action="store_true", help="pipe.enable_model_cpu_offload() instead of .to()")
    parser.add_argument("--repeats", type=int, default=1, help="generations to time (the same seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="the PNG written (default: qwen-image-MODE.png)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be ≥ 1, got {args.repeats}")
    try:  # checked before minutes of loading
        config = unbottle.SparseAttentionConfig(density=args.density, block_size=128, reshape=args.reshape)
    except ValueError as e:
        parser.error(f"--density: {e}")

    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(MODEL_ID, torch_dtype=torch.bfloat16)
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
    output = args.output or f"qwen-image-{args.mode}.png"
    out.images[0].save(output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

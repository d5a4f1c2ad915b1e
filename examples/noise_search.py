"""Reward-guided initial-noise exploration and optimization (CARINOX, Kasaei et al. 2025; ReNO, Eyring et al. 2024).

    python examples/noise_search.py                          # the shipped shapes model + shapes-clip: offline, CPU
    python examples/noise_search.py --explore 8 --optimize 5 --prompt "a green triangle above a yellow circle"
    python examples/noise_search.py --hub sd-turbo           # SD-Turbo, HPSv2.1 + ImageReward, 4 × 50 iterations
    python examples/noise_search.py --hub sdxl-turbo         # SDXL-Turbo (fp16-fix VAE, Euler ancestral trailing)
    python examples/noise_search.py --hub flux-schnell       # FLUX.1-schnell, one step, bf16
    python examples/noise_search.py --hub sd-turbo --rewards hps:5,imagereward:5 --prompt "a red cube on a blue sphere"

Shapes (default): the stock image of `--seed`, then exploration alone (best of `--explore` seeds by the reward),
then exploration wrapping optimization (each seed's noise optimized for `--optimize` iterations, the best kept, as
CARINOX does). For each it prints the reward, the shapes evaluator's facts (`unbottle.shapes.evaluate.score`: object,
colour, relation, ... read back from the pixels) and the seconds, and saves a PNG. The shapes model samples 20
steps with CFG, so every iteration backpropagates through 40 transformer calls and the VAE: a few iterations take a
minute or two on a CPU. Hub models (`--hub`, needs the weights in the local cache and a GPU): the CARINOX setting,
one-step generation at 512², rewards HPSv2.1 and ImageReward at λ = 5 (their weights: see `examples/rewards.py`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

import unbottle
import unbottle.shapes
from unbottle.shapes.evaluate import score as shapes_facts

# hub generators (CARINOX's one-step models; ReNO's for FLUX): id, dtype, one-step call at 512²
HUB = {
    "sd-turbo": ("stabilityai/sd-turbo", torch.float16, dict(num_inference_steps=1, guidance_scale=0.0)),
    "sdxl-turbo": ("stabilityai/sdxl-turbo", torch.float16, dict(num_inference_steps=1, guidance_scale=0.0)),
    "flux-schnell": ("black-forest-labs/FLUX.1-schnell", torch.bfloat16,
                     dict(num_inference_steps=1, guidance_scale=0.0, max_sequence_length=256)),
}  # fmt: skip


def first_image(out: object) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: the first image, or the first frame of the first video."""
    images = np.asarray(out.frames if hasattr(out, "frames") else out.images)
    return images[0, 0] if images.ndim == 5 else images[0]


def report(label: str, image: np.ndarray, scores: dict[str, float], seconds: float, prompt: str, facts: bool,
           path: str) -> None:  # fmt: skip
    """Print the reward scores (and the shapes evaluator's facts) of one image; save it."""
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)
    line = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
    print(f"{label:<36} {line}  [{seconds:.1f} s]  → {path}")
    if facts:
        found = shapes_facts(image, prompt)
        shown = " ".join(f"{name}{'✓' if ok else '✗'}" for name, ok in found.items())
        print(f"{'':<36} facts {sum(found.values())}/{len(found)}: {shown}")


def load_hub(name: str, device: str) -> tuple[object, dict]:
    """A one-step hub generator as CARINOX / ReNO set it up (local cache only)."""
    from diffusers import AutoencoderKL, AutoPipelineForText2Image, EulerAncestralDiscreteScheduler

    model_id, dtype, call = HUB[name]
    kwargs = {"torch_dtype": dtype, "local_files_only": True}
    if name == "sdxl-turbo":  # the fp16-safe SDXL VAE, as CARINOX uses
        kwargs["vae"] = AutoencoderKL.from_pretrained("madebyollin/sdxl-vae-fp16-fix", **kwargs)
    pipe = AutoPipelineForText2Image.from_pretrained(model_id, **kwargs).to(device)
    if name == "sdxl-turbo":
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                     timestep_spacing="trailing")  # fmt: skip
    return pipe, dict(call, height=512, width=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", choices=sorted(HUB), help="a one-step hub model (default: the shipped shapes model)")
    parser.add_argument("--prompt", default=None, help="default: a shapes caption, or CARINOX's example prompt")
    parser.add_argument("--rewards", help="NAME[:W],... (default: shapes-clip; hub: hps:5,imagereward:5)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--explore", type=int, default=4, help="seeds to explore (default 4)")
    parser.add_argument("--optimize", type=int, default=None, help="iterations per seed (default: shapes 3, hub 50)")
    parser.add_argument("--lr", type=float, default=5.0, help="SGD learning rate (default 5, CARINOX's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="noise_search", help="file name prefix of the PNGs")
    args = parser.parse_args()

    if args.hub:
        pipe, call = load_hub(args.hub, args.device)
        prompt = args.prompt or "a red cube on a blue sphere"
        rewards = unbottle.rewards.parse_rewards(args.rewards or "hps:5,imagereward:5")
        iterations = 50 if args.optimize is None else args.optimize
        checkpointing = True
    else:  # the shapes model samples 20 steps with CFG: a few iterations already move the reward
        pipe = unbottle.shapes.load_pipeline("t2i", device=args.device)
        call = dict(unbottle.shapes.call_defaults("t2i"))
        prompt = args.prompt or "a red circle to the left of a blue square"
        rewards = unbottle.rewards.parse_rewards(args.rewards or unbottle.rewards.DEFAULT)
        iterations = 3 if args.optimize is None else args.optimize
        checkpointing = False
    lr = args.lr
    pipe.set_progress_bar_config(disable=True)
    loaded = {name: (unbottle.load_reward(name, device=args.device), w) for name, w in rewards.items()}
    facts = args.hub is None
    seeds = list(range(args.seed, args.seed + args.explore))
    print(f"{type(pipe).__name__}, prompt {prompt!r}, rewards {rewards}, seeds {seeds[0]}–{seeds[-1]}, "
          f"{iterations} iterations at lr {lr}")  # fmt: skip

    t = time.perf_counter()
    stock = unbottle.NoiseSearch(pipe, loaded, seeds=[args.seed], iterations=0, progress=False)
    result = stock(prompt, output_type="np", **call)  # the stock image of --seed, scored
    report(f"stock (seed {args.seed})", first_image(result.output), result.scores, time.perf_counter() - t, prompt,
           facts, f"{args.out}_stock.png")  # fmt: skip

    t = time.perf_counter()
    explore = unbottle.NoiseSearch(pipe, loaded, seeds=seeds, iterations=0)
    result = explore(prompt, output_type="np", **call)
    report(f"explore {len(seeds)} (seed {result.seed})", first_image(result.output), result.scores,
           time.perf_counter() - t, prompt, facts, f"{args.out}_explore.png")  # fmt: skip

    if iterations:
        t = time.perf_counter()
        search = unbottle.NoiseSearch(pipe, loaded, seeds=seeds, iterations=iterations, lr=lr,
                                      gradient_checkpointing=checkpointing)  # fmt: skip
        result = search(prompt, output_type="np", **call)
        label = f"explore+optimize (seed {result.seed}, it {result.iteration})"
        report(label, first_image(result.output), result.scores, time.perf_counter() - t, prompt, facts,
               f"{args.out}_optimize.png")  # fmt: skip
        for s, steps in result.history.items():
            trace = " ".join(f"{step.loss:.4f}" for step in steps)
            print(f"{'':<36} seed {s}: Σ(1 − r~) per iteration {trace}")


if __name__ == "__main__":
    main()

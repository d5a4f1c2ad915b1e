"""Structured cross-attention guidance (Feng et al. 2023) on a stock pipeline, against the stock run of the same seed.

    python examples/structured_guidance.py                       # the shipped shapes model, offline, CPU, seconds
    python examples/structured_guidance.py --prompt "a striped red star and a dotted blue circle" --mode conjunction
    python examples/structured_guidance.py --model sd15          # Stable Diffusion 1.5 (needs the weights)
    python examples/structured_guidance.py --model sdxl          # SDXL base 1.0 (needs the weights + a GPU)
    python examples/structured_guidance.py --model pixart        # PixArt-Σ 1024 (needs the weights + a GPU)
    python examples/structured_guidance.py --model wan           # Wan2.1-T2V-1.3B, one frame (weights + a GPU)

Prints the prompt's noun phrases (the structure the guidance uses), saves the stock and the guided result as PNG,
and, on the shapes model, scores both with the shapes evaluator (each fact of the caption: objects, colours,
textures, relation, count).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

import unbottle

# hub models: (id, call arguments)
MODELS = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", dict(num_inference_steps=50, guidance_scale=7.5)),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", dict(num_inference_steps=40, guidance_scale=6.0)),
    "pixart": ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", dict(num_inference_steps=20, guidance_scale=4.5)),
    "wan": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dict(height=480, width=832, num_frames=1, num_inference_steps=50)),
}


def first_image(out: object) -> np.ndarray:
    """(H, W, 3) uint8: the first image, or the first frame of the first video."""
    images = np.asarray(out.frames if hasattr(out, "frames") else out.images)
    image = images[0, 0] if images.ndim == 5 else images[0]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), help="a hub model (default: the shipped shapes model)")
    parser.add_argument("--prompt", default="a dotted yellow triangle and a solid blue star")
    parser.add_argument("--mode", choices=["average", "conjunction"], default="average")
    parser.add_argument("--parser", default="auto", help="noun-phrase parser: auto, stanza, spacy, builtin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="structured", help="prefix of the two PNG files written")
    args = parser.parse_args()

    if args.model is None:
        from unbottle.shapes import call_defaults, load_pipeline

        pipe, call = load_pipeline("t2i"), dict(call_defaults("t2i"))
    else:
        from diffusers import DiffusionPipeline

        model_id, call = MODELS[args.model]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe = DiffusionPipeline.from_pretrained(model_id, torch_dtype=dtype).to(device)

    def run() -> np.ndarray:
        out = pipe(args.prompt, output_type="np", generator=torch.Generator().manual_seed(args.seed), **call)
        return first_image(out)

    print(f"noun phrases: {unbottle.noun_phrases(args.prompt, parser=args.parser)}")
    stock = run()
    unbottle.enable_structured_guidance(pipe, parser=args.parser, mode=args.mode)
    try:
        guided = run()
    finally:
        unbottle.disable_structured_guidance(pipe)
    for name, image in (("stock", stock), ("guided", guided)):
        Image.fromarray(image).save(f"{args.output}-{name}.png")
    print(f"wrote {args.output}-stock.png and {args.output}-guided.png")
    if args.model is None:
        from unbottle.shapes.evaluate import score

        for name, image in (("stock", stock), ("guided", guided)):
            facts = score(image, args.prompt)
            print(f"{name:>6}: {sum(facts.values())}/{len(facts)} facts  {facts}")


if __name__ == "__main__":
    main()

"""Generate with real hub models through the same loader as the `unbottle` CLI (needs the weights and a GPU).

    python examples/generate_hub_models.py flux     # black-forest-labs/FLUX.1-dev, 1024², 28 steps
    python examples/generate_hub_models.py wan      # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, 81 frames 480×832
    python examples/generate_hub_models.py sd3      # stabilityai/stable-diffusion-3.5-medium

The same runs from the shell: `unbottle image "..." --model black-forest-labs/FLUX.1-dev -o flux.png`.
"""

from __future__ import annotations

import argparse

import torch

from unbottle.cli.generate import generate_image, generate_video
from unbottle.cli.loading import load_pipeline
from unbottle.cli.output import prepare_output

MODELS = {
    "flux": ("black-forest-labs/FLUX.1-dev", "image", dict(height=1024, width=1024, steps=28)),
    "sd3": ("stabilityai/stable-diffusion-3.5-medium", "image", dict(height=1024, width=1024, steps=28)),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "image", dict(height=1024, width=1024, steps=30)),
    "wan": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "video", dict(height=480, width=832, frames=81, steps=50)),
    "ltx": ("Lightricks/LTX-Video", "video", dict(height=480, width=704, frames=161, steps=50)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--prompt", default="a red car and a white sheep in a field, photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_id, kind, settings = MODELS[args.model]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(model_id, kind, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    out = prepare_output(f"{args.model}.{'png' if kind == 'image' else 'mp4'}")
    if kind == "image":
        generate_image(pipe, args.prompt, out, seed=args.seed, **settings)
    else:
        generate_video(pipe, args.prompt, out, seed=args.seed, fps=16, **settings)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

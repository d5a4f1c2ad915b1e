"""Build every tiny offline fixture, run it for two steps and save a contact sheet: what `unbottle.testing` gives.

python examples/tiny_pipelines.py -o tiny.png      # offline, CPU, a few seconds
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from unbottle.testing import IMAGE_FIXTURES, VIDEO_FIXTURES, tiny_diffusion_gemma_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="tiny-fixtures.png")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

    tiles = []
    for name, build in {**IMAGE_FIXTURES, **VIDEO_FIXTURES}.items():
        pipe = build()
        kwargs = {"num_inference_steps": 2, "height": args.size, "width": args.size, "output_type": "np",
                  "generator": torch.Generator().manual_seed(0)}  # fmt: skip
        if name == "pixart":
            kwargs["use_resolution_binning"] = False
        if name in VIDEO_FIXTURES:
            first = pipe("a red circle moves left", num_frames=5, **kwargs).frames[0][0]  # (H, W, 3)
        else:
            first = pipe("a red circle to the left of a blue square", **kwargs).images[0]
        print(f"{name:>16}: {type(pipe).__name__}, output {first.shape}")
        tiles.append((np.clip(first, 0, 1) * 255).astype(np.uint8))
    Image.fromarray(np.concatenate(tiles, axis=1)).save(args.output)
    print(f"wrote {args.output}")

    text = tiny_diffusion_gemma_pipeline()("a red circle", gen_length=8, num_inference_steps=2).texts[0]
    print(f"tiny DiffusionGemma says: {text!r}")


if __name__ == "__main__":
    main()

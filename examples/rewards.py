"""Differentiable rewards (ReNO / CARINOX): score images against prompts, and follow a reward's gradient.

    python examples/rewards.py                     # the default reward (shapes-clip, shipped): offline, CPU, seconds
    python examples/rewards.py --hub               # + CLIP, HPSv2.1, PickScore, aesthetic, ImageReward, if available
    python examples/rewards.py --hub --hps HPS_v2.1_compressed.pt --aesthetic sac+logos+ava1-l14-linearMSE.pth
    python examples/rewards.py --hub --clip hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K   # downloads (named hub id)
    python examples/rewards.py --image photo.png --prompt "a red car" --hub

On rendered shapes scenes (default) each image is scored against its true caption and against another scene's: the
raw score, and `unit`, CARINOX's r~ in about [0, 1] that the noise search turns into `weight * (1 - r~)`. Then one
signed-gradient step on the pixels shows that the score is differentiable down to the image. The hub rewards load
from `--NAME PATH` (a local file / folder, or "hf-hub:..." to download) or, without it, from the local hub cache
only; a reward whose weights or package are missing is reported and skipped. The category-aware weights
(`unbottle.category_rewards`) are printed at the end.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from PIL import Image

import unbottle
from unbottle.shapes import caption, render_image, sample_scene

HUB_REWARDS = ("clip", "hps", "pickscore", "aesthetic", "imagereward")


def shapes_batch(n: int, seed: int, size: int = 128) -> tuple[torch.Tensor, list[str]]:
    """(n, 3, size, size) rendered shapes scenes in [0, 1] and their captions."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = np.stack([render_image(s, size) for s in scenes])  # (n, size, size, 3) uint8
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, [caption(s, rng) for s in scenes]


def load_images(paths: list[str]) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1] from image files of one size."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def report(reward: unbottle.rewards.Reward, images: torch.Tensor, prompts: list[str], others: list[str]) -> None:
    """Print raw score and unit for the true prompts and for the other prompts, then one gradient step."""
    with torch.no_grad():
        true, other = reward(images, prompts), reward(images, others)
    print(f"\n[{reward.name}]")
    for prompt, t, o, ut, uo in zip(prompts, true, other, reward.unit(true), reward.unit(other), strict=True):
        print(f"  {t:8.3f} (unit {ut:.3f})   vs other caption {o:8.3f} (unit {uo:.3f})   {prompt!r}")
    pixels = images[:1].clone().requires_grad_(True)
    before = reward(pixels, others[0])
    (grad,) = torch.autograd.grad(before.sum(), pixels)  # (1, 3, H, W): d score / d pixels
    after = reward((pixels + 2 / 255 * grad.sign()).clamp(0, 1), others[0])
    print(f"  gradient step towards {others[0]!r}: {before.item():.4f} -> {after.item():.4f} "
          f"(|grad| = {grad.norm():.3e})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="shapes scenes to score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", nargs="*", default=None, help="image files to score instead (same size)")
    parser.add_argument("--prompt", default=None, help="the prompt of --image")
    parser.add_argument("--hub", action="store_true", help="also the hub rewards: " + ", ".join(HUB_REWARDS))
    for name in HUB_REWARDS:
        parser.add_argument(
            f"--{name}", default=None, metavar="PATH", help=f"weights of {name} (file, folder, hf-hub:)"
        )
    parser.add_argument("--aesthetic-clip", default=None, metavar="PATH", help="CLIP ViT-L/14 weights of aesthetic")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if args.image:
        if not args.prompt:
            parser.error("--image needs --prompt")
        images, prompts = load_images(args.image), [args.prompt] * len(args.image)
        others = ["a blurry photo of nothing in particular"] * len(args.image)
    else:
        images, prompts = shapes_batch(args.n, args.seed)
        others = prompts[1:] + prompts[:1]  # each image against another scene's caption

    names = [unbottle.rewards.DEFAULT] + (list(HUB_REWARDS) if args.hub else [])
    for name in names:
        kwargs = {"clip_path": args.aesthetic_clip} if name == "aesthetic" else {}
        try:
            reward = unbottle.load_reward(name, path=getattr(args, name, None), device=args.device, **kwargs)
        except (FileNotFoundError, ImportError) as error:
            print(f"\n[{name}] skipped: {error}")
            continue
        report(reward, images.to(args.device), prompts, others)
        del reward

    print("\ncategory-aware weights (CARINOX correlation table):")
    for category in ("color", "shape", "texture", "spatial", "non_spatial", "complex", "3d_spatial", "numeracy"):
        print(f"  {category:12s} {unbottle.category_rewards(category)}")


if __name__ == "__main__":
    main()

"""What the quality benchmark generates and compares (the shapes text-to-image model, held-out captions), and its
command-line options."""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field

from ..script import parse_densities

HELD_OUT_SEED = 10_000


@dataclass(frozen=True)
class QualityOptions:
    """What the quality benchmark generates and which method settings it compares with the stock pipeline."""

    captions: int = 64
    steps: int = 20
    batch: int = 16
    sparse: tuple[float, ...] = ()
    sparse_pattern: str = "cached"
    sparse_block_size: int = 16
    bottleneck: tuple[str, ...] = ()
    stages: tuple[tuple, ...] = ()  # custom bottleneck stage lists (tuples of `Stage`), one row each
    structured: bool = False
    seed: int = HELD_OUT_SEED
    kinds: tuple[str, ...] = ()  # scene kinds of the held-out captions (world.KINDS); () = the natural mix
    noise_seeds: int = 1  # each caption is generated with this many noises
    noise_search: tuple[tuple[int, int], ...] = ()  # (seeds, iterations) per noise-search row
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ...shapes.world import KINDS

        for kind in self.kinds:
            if kind not in KINDS:
                raise ValueError(f"kinds: {kind!r} is not a scene kind; allowed: {', '.join(KINDS)}")
        for seeds, iterations in self.noise_search:
            if seeds < 1 or iterations < 0:
                raise ValueError(f"noise search {seeds}x{iterations}: seeds must be ≥ 1 and iterations ≥ 0")
        for name in ("captions", "steps", "batch", "sparse_block_size", "noise_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for d in self.sparse:
            if not 0.0 < d <= 1.0:
                raise ValueError(f"sparse density must be in (0, 1], got {d}")
        from ...pipelines.bottleneck_presets import PRESETS

        for name in self.bottleneck:
            if name not in PRESETS:
                raise ValueError(f"bottleneck preset {name!r} is unknown; available: {', '.join(PRESETS)}")


def parse_noise_search(text: str) -> list[tuple[int, int]]:
    """Parse `--noise`: "4x0,1x3" → [(4, 0), (1, 3)] (seeds × iterations); ValueError naming the bad item."""
    settings = []
    for item in (t.strip() for t in text.split(",")):
        seeds, sep, iterations = item.partition("x")
        if not (sep and seeds.isdigit() and iterations.isdigit()):
            raise ValueError(f"--noise item {item!r}: expected SEEDSxITERATIONS, e.g. 4x0 or 2x3")
        settings.append((int(seeds), int(iterations)))
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The quality benchmark's options (`unbottle bench quality`)."""
    parser.add_argument("--captions", type=int, default=64, help="held-out captions (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--caption-seed", type=int, default=HELD_OUT_SEED, metavar="S",
                        help=f"seed of the caption draw (default {HELD_OUT_SEED}, the held-out set; "
                        "another seed gives a tuning set)")  # fmt: skip
    densities = functools.partial(parse_densities, option="--sparse")
    parser.add_argument("--sparse", type=densities, metavar="D,...", default=[],
                        help="sparse-attention densities to compare with stock")  # fmt: skip
    parser.add_argument("--sparse-pattern", choices=["cached", "window", "dynamic"], default="cached",
                        help="sparse pattern (default cached)")  # fmt: skip
    parser.add_argument(
        "--presets",
        type=lambda t: [p.strip() for p in t.split(",") if p.strip()],
        default=[],
        metavar="P,...",
        help="bottleneck presets to compare with stock (e.g. wan-2x,wan-3x)",
    )
    parser.add_argument("--stages", action="append", default=[], metavar="STAGES",
                        help="a custom bottleneck stage list to compare with stock, "
                        "SCALE:STEPS:STRENGTH:SHIFT,... (repeatable)")  # fmt: skip
    parser.add_argument("--structured", action="store_true", help="compare structured guidance with stock")
    parser.add_argument("--kinds", type=lambda t: [k.strip() for k in t.split(",") if k.strip()], default=[],
                        metavar="K,...", help="held-out captions of these scene kinds only")  # fmt: skip
    parser.add_argument("--noise-seeds", type=int, default=1, metavar="N",
                        help="generate every caption with N noises (default 1)")  # fmt: skip
    parser.add_argument("--noise", default="", metavar="SxI,...",
                        help="noise-search rows, seeds × iterations (e.g. 1x0,4x0,1x3,2x2)")  # fmt: skip

"""What the quality benchmark generates and compares (the shapes model's held-out captions as images, or as clips with
`--video`), and its command-line options."""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from dataclasses import dataclass, field

from ...attention_processors.config import MAX_BLOCK_SIZE, PATTERNS
from ...shapes.pretrained import T2V_DIR, call_defaults
from ..script import parse_densities, parse_names

HELD_OUT_SEED = 10_000
VIDEO_HELD_OUT_SEED = HELD_OUT_SEED + 1  # the model card's held-out motion captions
VIDEO_BLOCK_SIZE = 64  # tokens per block on clips (the default 33-frame clip: 2,304 tokens, 36 blocks)


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


@functools.cache
def temporal_factor() -> int:
    """Frames per latent frame of the shipped shapes VAE (its `scale_factor_temporal`; 4, Wan's, if unreadable)."""
    try:
        value = json.loads((T2V_DIR / "vae" / "config.json").read_text()).get("scale_factor_temporal", 4)
    except (OSError, ValueError, AttributeError):
        return 4
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 4


def _default_frames() -> int:
    return call_defaults("t2v")["num_frames"]


@dataclass(frozen=True)
class SparseSetting:
    """One sparse-attention row of the video table: density (or a calibrated `coverage`), pattern, Re-ttention
    reshape, tokens per block; `matched` names the coverage whose realized density a uniform row repeats."""

    density: float | None
    pattern: str
    reshape: bool
    block_size: int
    coverage: float | None = None
    matched: float | None = None

    @property
    def name(self) -> str:
        """The row's label, e.g. "sparse 0.1 (cached, block 64, reshape on)", "coverage 0.9 (cached, ...)" or
        "sparse 0.412 (cached, ..., uniform at coverage 0.9's density)"."""
        reshape = "on" if self.reshape else "off"
        where = f"{self.pattern}, block {self.block_size}, reshape {reshape}"
        if self.coverage is not None:
            return f"coverage {self.coverage:g} ({where})"
        if self.matched is not None:
            return f"sparse {self.density:.3g} ({where}, uniform at coverage {self.matched:g}'s density)"
        return f"sparse {self.density:g} ({where})"

    def config_kwargs(self) -> dict:
        """The `SparseAttentionConfig` fields this row sets."""
        budget = {"coverage": self.coverage} if self.coverage is not None else {"density": self.density}
        return {**budget, "pattern": self.pattern, "reshape": self.reshape, "block_size": self.block_size}


@dataclass(frozen=True)
class VideoQualityOptions:
    """What the video quality benchmark generates (held-out motion captions as clips) and which sparse-attention
    settings it compares with the dense clips: every combination of `sparse` × `patterns` × `reshape` ×
    `block_sizes` (`grid`); and per `coverage` (calibrated budgets, cached patterns) × `block_sizes` × `reshape`, a
    calibrated row and then a uniform row at the density the calibrated one realized (`coverage_grid`)."""

    captions: int = 64
    steps: int = 20
    batch: int = 16
    frames: int = field(default_factory=_default_frames)  # the model's clip length unless given
    sparse: tuple[float, ...] = ()
    patterns: tuple[str, ...] = ("cached",)
    reshape: tuple[bool, ...] = (True,)
    block_sizes: tuple[int, ...] = (VIDEO_BLOCK_SIZE,)
    seed: int = VIDEO_HELD_OUT_SEED
    coverage: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("captions", "steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        factor = temporal_factor()
        frames = self.frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames <= factor or (frames - 1) % factor:
            raise ValueError(
                f"frames must be {factor}k + 1 ≥ {factor + 1} (the VAE packs {factor} frames into a latent frame; "
                f"e.g. {', '.join(str(factor * k + 1) for k in (1, 2, 4, 8))}), got {frames!r}"
            )
        for d in self.sparse:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d <= 1.0:
                raise ValueError(f"sparse density must be in (0, 1], got {d!r}")
        _check_list("patterns", self.patterns, lambda p: p in PATTERNS, ", ".join(PATTERNS))
        _check_list("reshape", self.reshape, lambda r: isinstance(r, bool), "True (on) or False (off)")
        _check_list(
            "block_sizes", self.block_sizes,
            lambda b: isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BLOCK_SIZE,
            f"whole numbers in [1, {MAX_BLOCK_SIZE}]",
        )  # fmt: skip
        if len(set(self.sparse)) < len(self.sparse):
            raise ValueError(f"sparse densities must differ, got {self.sparse}")
        for c in self.coverage:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 1.0:
                raise ValueError(f"coverage must be in (0, 1], got {c!r}")
        if len(set(self.coverage)) < len(self.coverage):
            raise ValueError(f"coverage values must differ, got {self.coverage}")

    def grid(self) -> list[SparseSetting]:
        """The sparse rows: every combination, grouped by pattern, then block size, then reshape (on before off as
        given), densities innermost, each list in the order given."""
        combos = itertools.product(self.patterns, self.block_sizes, self.reshape, self.sparse)
        return [SparseSetting(d, p, r, b) for p, b, r, d in combos]

    def coverage_grid(self) -> list[SparseSetting]:
        """The calibrated rows (cached patterns): every block size × reshape × coverage, in the order given. Each is
        followed at run time by a uniform row at its realized density (`SparseSetting.matched`)."""
        combos = itertools.product(self.block_sizes, self.reshape, self.coverage)
        return [SparseSetting(None, "cached", r, b, coverage=c) for b, r, c in combos]


def _check_list(name: str, values: tuple, ok, allowed: str) -> None:
    """A non-empty tuple of allowed, distinct values; ValueError naming the field, the value and what is allowed."""
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{name} must be a non-empty tuple of {allowed}, got {values!r}")
    for value in values:
        if not ok(value):
            raise ValueError(f"{name}: {value!r} is not allowed; allowed: {allowed}")
    if len(set(values)) < len(values):
        raise ValueError(f"{name}: each value once, got {values!r}")


def parse_on_off(text: str, option: str = "--reshape") -> list[bool]:
    """`on`, `off`, `on,off` → [True], [False], [True, False] (duplicates dropped); argparse's type error naming
    `option` otherwise."""
    words = [t.strip().lower() for t in text.split(",")]
    if any(w not in ("on", "off") for w in words):
        raise argparse.ArgumentTypeError(f"{option} takes on, off or on,off, got {text!r}")
    return [w == "on" for w in dict.fromkeys(words)]


def parse_block_sizes(text: str, option: str = "--sparse-block-sizes") -> list[int]:
    """Tokens per block, comma-separated, each in [1, MAX_BLOCK_SIZE], e.g. `32,64`; errors name `option`."""
    sizes = []
    for part in (t.strip() for t in text.split(",")):
        if not part.isdigit() or not 1 <= int(part) <= MAX_BLOCK_SIZE:
            raise argparse.ArgumentTypeError(f"{option} takes whole numbers in [1, {MAX_BLOCK_SIZE}], got {part!r}")
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


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
    parser.add_argument("--caption-seed", type=int, default=None, metavar="S",
                        help=f"seed of the caption draw (default {HELD_OUT_SEED}, with --video {VIDEO_HELD_OUT_SEED}: "
                        "the held-out sets; another seed gives a tuning set)")  # fmt: skip
    parser.add_argument("--video", action="store_true",
                        help="score clips of held-out motion captions instead of images: one sparse-attention row per "
                        "--sparse × --sparse-patterns × --reshape × --sparse-block-sizes, with the realized "
                        "density")  # fmt: skip
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help=f"frames per clip with --video ({temporal_factor()}k + 1; default the model's, "
                        f"{_default_frames()})")  # fmt: skip
    densities = functools.partial(parse_densities, option="--sparse")
    parser.add_argument("--sparse", type=densities, metavar="D,...", default=[],
                        help="sparse-attention densities to compare with stock")  # fmt: skip
    patterns = functools.partial(parse_names, allowed=("cached", "window", "dynamic"), option="--sparse-patterns")
    coverage = functools.partial(parse_densities, option="--coverage")
    parser.add_argument("--coverage", type=coverage, metavar="C,...", default=[],
                        help="with --video: calibrated budgets (cached patterns keeping, per row, the fewest key "
                        "blocks that hold this softmax mass), each followed by uniform density at the density it "
                        "realized")  # fmt: skip
    parser.add_argument("--sparse-patterns", "--sparse-pattern", dest="sparse_patterns", type=patterns,
                        default=["cached"], metavar="P,...",
                        help="sparse patterns from cached, window, dynamic (default cached; images take "
                        "one)")  # fmt: skip
    parser.add_argument("--reshape", type=parse_on_off, default=None, metavar="on,off",
                        help="Re-ttention reshape with --video: on, off or both (default on)")  # fmt: skip
    parser.add_argument("--sparse-block-sizes", type=parse_block_sizes, default=None, metavar="B,...",
                        help=f"tokens per block with --video (default {VIDEO_BLOCK_SIZE}; images: 16)")  # fmt: skip
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

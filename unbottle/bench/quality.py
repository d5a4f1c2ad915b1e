"""Quality benchmark on the shapes text-to-image model (issue #4): evaluator accuracy and fidelity to the stock output.

    unbottle bench quality -o bench/results --captions 64 --sparse 0.25,0.1      # CPU or GPU

The shipped shapes WanPipeline generates the same held-out captions (seed 10,000, fixed generators) once stock and
once per method setting. Each setting reports the shapes evaluator's accuracy (all facts of a caption right, per
T2I-CompBench-like category, and the fraction of facts right) and its fidelity to the stock images of the same seeds
(PSNR in dB over all uint8 pixels of the set; identical sets give inf). Compared so far: sparse attention at each
`--sparse` density (Re-ttention reshape on, `--sparse-pattern`, 16-token blocks = 16 blocks per 256-token image), and
bottleneck sampling with each `--presets` preset and each custom `--stages` list (their own step counts; the time
column shows the cost),
structured cross-attention guidance (`--structured`), and reward-guided noise search (`--noise SEEDSxITERS,...`,
CARINOX with the default shapes-clip reward, one caption at a time: seeds 0..SEEDS−1 explored, each optimized for
ITERS iterations; `1x0` is the plain generation of seed 0, the baseline of the noise rows; the compute column counts
generator passes per image, forward and backward).
Writes quality-shapes.json and quality-shapes.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..shapes import call_defaults, caption, load_pipeline, sample_scene
from ..shapes.evaluate import FACT_TYPES, Report, evaluate

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
        from ..shapes.world import KINDS

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
        from ..pipelines.bottleneck_presets import PRESETS

        for name in self.bottleneck:
            if name not in PRESETS:
                raise ValueError(f"bottleneck preset {name!r} is unknown; available: {', '.join(PRESETS)}")


def held_out_captions(n: int, seed: int = HELD_OUT_SEED, kinds: tuple[str, ...] = ()) -> list[str]:
    """The first `n` held-out captions of the shapes world (the model cards' evaluation set), or of `kinds` only."""
    rng = random.Random(seed)
    return [caption(sample_scene(rng, rng.choice(kinds) if kinds else None), rng) for _ in range(n)]


@torch.no_grad()
def generate(
    pipe: object, captions: list[str], steps: int | None, batch: int, runner: object | None = None,
    noise_seeds: int = 1,
) -> np.ndarray:  # fmt: skip
    """(noise_seeds·n, H, W, 3) uint8 images; chunk i of noise round r uses generator seed r·1,000,003 + i, so every
    setting sees the same noise.

    `runner` generates in the pipeline's place (a BottleneckSampler: `steps` must then be None)."""
    kwargs = {**call_defaults("t2i"), "output_type": "np"}
    kwargs.pop("num_inference_steps")
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    images = []
    for r in range(noise_seeds):
        for i in range(0, len(captions), batch):
            gen = torch.Generator().manual_seed(r * 1_000_003 + i)
            frames = (runner or pipe)(captions[i : i + batch], generator=gen, **kwargs).frames
            images += [(np.asarray(f[0]) * 255).round().astype(np.uint8) for f in frames]  # first (only) frame
    return np.stack(images)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def fact_accuracy(report: Report) -> float:
    """The fraction of all caption facts that hold (finer than the all-facts-right accuracy)."""
    total = sum(report.fact_counts.values())
    return sum(report.per_fact[f] * n for f, n in report.fact_counts.items()) / total if total else math.nan


def _row(name: str, images: np.ndarray, captions: list[str], stock: np.ndarray, seconds: float) -> dict:
    report = evaluate(zip(images, captions, strict=True))
    return {
        "setting": name, "accuracy": report.accuracy, "fact_accuracy": fact_accuracy(report),
        "per_category": report.per_category, "category_counts": report.category_counts,
        "per_fact": report.per_fact, "fact_counts": report.fact_counts,
        "psnr_vs_stock": psnr(images, stock),  # over the whole set (a mean of per-image PSNRs is inf if one matches)
        "seconds": round(seconds, 2),
    }  # fmt: skip


def run_quality(
    options: QualityOptions, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """Generate the held-out captions stock and per setting; score each setting."""
    from ..attention_processors import SparseAttentionConfig, disable_sparse_attention, enable_sparse_attention
    from ..cli.bottleneck import format_stages
    from ..pipelines.bottleneck import BottleneckSampler

    pipe = load_pipeline("t2i", device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    prompts = held_out_captions(options.captions, options.seed, options.kinds)
    captions = prompts * options.noise_seeds  # the caption of every generated image, noise round by round
    generate_all = functools.partial(generate, noise_seeds=options.noise_seeds)
    start = time.perf_counter()
    stock = generate_all(pipe, prompts, options.steps, options.batch)
    rows = [_row("stock", stock, captions, stock, time.perf_counter() - start)]
    log(f"stock: accuracy {rows[-1]['accuracy']:.3f}")
    for density in options.sparse:
        config = SparseAttentionConfig(density=density, pattern=options.sparse_pattern,
                                       block_size=options.sparse_block_size)  # fmt: skip
        enable_sparse_attention(pipe, config)
        try:
            start = time.perf_counter()
            images = generate_all(pipe, prompts, options.steps, options.batch)
        finally:
            disable_sparse_attention(pipe)
        name = f"sparse {density:g} ({options.sparse_pattern}, block {options.sparse_block_size})"
        rows.append(_row(name, images, captions, stock, time.perf_counter() - start))
        log(f"{name}: accuracy {rows[-1]['accuracy']:.3f}, PSNR vs stock {rows[-1]['psnr_vs_stock']:.1f} dB")
    if options.structured:
        from ..guidance import disable_structured_guidance, enable_structured_guidance

        enable_structured_guidance(pipe)
        try:
            start = time.perf_counter()
            images = generate_all(pipe, prompts, options.steps, options.batch)
        finally:
            disable_structured_guidance(pipe)
        rows.append(_row("structured guidance", images, captions, stock, time.perf_counter() - start))
        log(f"structured guidance: accuracy {rows[-1]['accuracy']:.3f}, PSNR {rows[-1]['psnr_vs_stock']:.1f} dB")
    samplers = [(preset, BottleneckSampler.from_preset(pipe, preset)) for preset in options.bottleneck]
    samplers += [(format_stages(stages), BottleneckSampler(pipe, list(stages))) for stages in options.stages]
    for name, sampler in samplers:
        start = time.perf_counter()
        images = generate_all(pipe, prompts, None, options.batch, runner=sampler)
        steps = "/".join(str(s.steps) for s in sampler.stages)
        rows.append(_row(f"bottleneck {name} ({steps} steps)", images, captions, stock, time.perf_counter() - start))
        log(f"{rows[-1]['setting']}: accuracy {rows[-1]['accuracy']:.3f}, PSNR {rows[-1]['psnr_vs_stock']:.1f} dB")
    if options.noise_search:
        rows += noise_search_rows(pipe, prompts, options, stock[: len(prompts)], device, log)
    return {"model": "shapes-t2v (t2i)", "options": asdict(options), "device": str(device), "rows": rows,
            "torch": torch.__version__}  # fmt: skip


def noise_search_rows(
    pipe: object, prompts: list[str], options: QualityOptions, stock: np.ndarray, device: str | torch.device,
    log: Callable[[str], None],
) -> list[dict]:  # fmt: skip
    """One row per (seeds, iterations) of reward-guided noise search (CARINOX) with the default reward, per caption."""
    from ..pipelines.noise_search import NoiseSearch
    from ..rewards import DEFAULT, load_reward

    reward = load_reward(DEFAULT, device=device)
    kwargs = {**call_defaults("t2i"), "num_inference_steps": options.steps, "output_type": "np"}
    rows = []
    for seeds, iterations in options.noise_search:
        search = NoiseSearch(pipe, {DEFAULT: (reward, 1.0)}, seeds=list(range(seeds)), iterations=iterations,
                             progress=False)  # fmt: skip
        start, images = time.perf_counter(), []
        for prompt in prompts:
            frames = np.asarray(search(prompt, **kwargs).output.frames)  # (1, 1, H, W, 3) in [0, 1]
            images.append((frames[0, 0] * 255).round().astype(np.uint8))
        name = f"noise search {seeds} seed{'s' * (seeds > 1)} × {iterations} it"
        row = _row(name, np.stack(images), prompts, stock, time.perf_counter() - start)
        # generator passes per image: each seed's iterates are generated; all but the last are backpropagated
        row["forward_passes"] = seeds * max(1, iterations)
        row["backward_passes"] = seeds * max(0, iterations - 1)
        rows.append(row)
        log(f"{name}: accuracy {row['accuracy']:.3f} ({row['forward_passes']} forward + {row['backward_passes']} "
            f"backward passes per image)")  # fmt: skip
    return rows


def parse_noise_search(text: str) -> list[tuple[int, int]]:
    """Parse `--noise`: "4x0,1x3" → [(4, 0), (1, 3)] (seeds × iterations); ValueError naming the bad item."""
    settings = []
    for item in (t.strip() for t in text.split(",")):
        seeds, sep, iterations = item.partition("x")
        if not (sep and seeds.isdigit() and iterations.isdigit()):
            raise ValueError(f"--noise item {item!r}: expected SEEDSxITERATIONS, e.g. 4x0 or 2x3")
        settings.append((int(seeds), int(iterations)))
    return settings


def markdown_report(results: dict) -> str:
    """One row per setting: accuracy, fact accuracy, per-category and per-fact accuracy, PSNR vs stock, time."""
    categories = sorted({c for row in results["rows"] for c in row["per_category"]})
    facts = [f for f in FACT_TYPES if any(f in row.get("per_fact", {}) for row in results["rows"])]
    opts = results["options"]
    fact_heads = [f"fact: {f}" for f in facts]
    passes = any("forward_passes" in row for row in results["rows"])
    head = ["setting", "accuracy", "facts", *categories, *fact_heads, "PSNR vs stock (dB)", "seconds"]
    head += ["generator passes / image (fwd + bwd)"] if passes else []
    kinds = f" of kinds {', '.join(opts['kinds'])}" if opts.get("kinds") else ""
    noises = f" × {opts['noise_seeds']} noise seeds" if opts.get("noise_seeds", 1) > 1 else ""
    lines = [
        f"Shapes T2I quality: {opts['captions']} held-out captions{kinds} (seed {opts['seed']}){noises}, "
        f"{opts['steps']} steps, {results['device']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in results["rows"]:
        cells = [row["setting"], f"{row['accuracy']:.3f}", f"{row['fact_accuracy']:.3f}"]
        cells += [f"{row['per_category'][c]:.3f}" if c in row["per_category"] else "–" for c in categories]
        cells += [f"{row['per_fact'][f]:.3f}" if f in row.get("per_fact", {}) else "–" for f in facts]
        cells += [f"{row['psnr_vs_stock']:.1f}", f"{row['seconds']:.1f}"]
        if passes:
            cells.append(f"{row['forward_passes']} + {row['backward_passes']}" if "forward_passes" in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """quality-shapes.json and quality-shapes.md in `out_dir` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "quality-shapes.json", out_dir / "quality-shapes.md"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    md_path.write_text(markdown_report(results))
    return json_path, md_path


def add_arguments(parser: argparse.ArgumentParser, parse_densities: Callable[[str], list[float]]) -> None:
    """The quality benchmark's options on the `bench` parser."""
    parser.add_argument("--captions", type=int, default=64, help="quality: held-out captions (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="quality: denoising steps (default 20)")
    parser.add_argument("--caption-seed", type=int, default=HELD_OUT_SEED, metavar="S",
                        help=f"quality: seed of the caption draw (default {HELD_OUT_SEED}, the held-out set; "
                        "another seed gives a tuning set)")  # fmt: skip
    densities = functools.partial(parse_densities, option="--sparse")
    parser.add_argument("--sparse", type=densities, metavar="D,...", default=[],
                        help="quality: sparse-attention densities to compare with stock")  # fmt: skip
    parser.add_argument("--sparse-pattern", choices=["cached", "window", "dynamic"], default="cached",
                        help="quality: sparse pattern (default cached)")  # fmt: skip
    parser.add_argument(
        "--presets",
        type=lambda t: [p.strip() for p in t.split(",") if p.strip()],
        default=[],
        metavar="P,...",
        help="quality: bottleneck presets to compare with stock (e.g. wan-2x,wan-3x)",
    )
    parser.add_argument("--stages", action="append", default=[], metavar="STAGES",
                        help="quality: a custom bottleneck stage list to compare with stock, "
                        "SCALE:STEPS:STRENGTH:SHIFT,... (repeatable)")  # fmt: skip
    parser.add_argument("--structured", action="store_true", help="quality: compare structured guidance with stock")
    parser.add_argument("--kinds", type=lambda t: [k.strip() for k in t.split(",") if k.strip()], default=[],
                        metavar="K,...", help="quality: held-out captions of these scene kinds only")  # fmt: skip
    parser.add_argument("--noise-seeds", type=int, default=1, metavar="N",
                        help="quality: generate every caption with N noises (default 1)")  # fmt: skip
    parser.add_argument("--noise", default="", metavar="SxI,...",
                        help="quality: noise-search rows, seeds × iterations (e.g. 1x0,4x0,1x3,2x2)")  # fmt: skip


def run_from_cli(args: argparse.Namespace) -> int:
    """`unbottle bench quality`: run on CUDA if present (else CPU), print the markdown table, write both files."""
    from ..cli.bottleneck import parse_stages
    from ..cli.errors import UsageError
    from ..cli.output import prepare_output_folder, remove_empty_folders

    stages = tuple(tuple(parse_stages(text, "--stages")) for text in args.stages)  # UsageError naming the stage
    try:
        options = QualityOptions(captions=args.captions, steps=args.steps, sparse=tuple(args.sparse),
                                 sparse_pattern=args.sparse_pattern, bottleneck=tuple(args.presets), stages=stages,
                                 seed=args.caption_seed,
                                 structured=args.structured, kinds=tuple(args.kinds),
                                 noise_seeds=args.noise_seeds,
                                 noise_search=tuple(parse_noise_search(args.noise)) if args.noise else ())  # fmt: skip
    except ValueError as e:
        raise UsageError(f"bench quality: {e}") from e
    created: list[Path] = []
    out_dir = prepare_output_folder(args.output, created)  # before the run: a bad -o loses no work
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        results = run_quality(options, device=device)
        _, md_path = write_outputs(results, out_dir)
    except BaseException:  # a failed or interrupted run takes back the empty folders that -o made
        remove_empty_folders(created)
        raise
    print(md_path.read_text())
    return 0

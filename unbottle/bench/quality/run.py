"""Quality benchmark on the shapes text-to-image model: evaluator accuracy and fidelity to the stock output.

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
Writes quality-shapes.json and quality-shapes.md. `--video` scores sparse attention on clips instead (video.py).
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ...errors import UsageError
from ...shapes import call_defaults, caption, load_pipeline, sample_scene
from .options import HELD_OUT_SEED, VIDEO_BLOCK_SIZE, QualityOptions, VideoQualityOptions, parse_noise_search
from .report import write_outputs
from .scores import score_row
from .video import run_video_quality


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


def run_quality(
    options: QualityOptions, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """Generate the held-out captions stock and per setting; score each setting."""
    from ...attention_processors import SparseAttentionConfig, disable_sparse_attention, enable_sparse_attention
    from ...cli.bottleneck import format_stages
    from ...pipelines.bottleneck import BottleneckSampler

    pipe = load_pipeline("t2i", device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    prompts = held_out_captions(options.captions, options.seed, options.kinds)
    captions = prompts * options.noise_seeds  # the caption of every generated image, noise round by round
    generate_all = functools.partial(generate, noise_seeds=options.noise_seeds)
    start = time.perf_counter()
    stock = generate_all(pipe, prompts, options.steps, options.batch)
    rows = [score_row("stock", stock, captions, stock, time.perf_counter() - start)]
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
        rows.append(score_row(name, images, captions, stock, time.perf_counter() - start))
        log(f"{name}: accuracy {rows[-1]['accuracy']:.3f}, PSNR vs stock {rows[-1]['psnr_vs_stock']:.1f} dB")
    if options.structured:
        from ...guidance import disable_structured_guidance, enable_structured_guidance

        enable_structured_guidance(pipe)
        try:
            start = time.perf_counter()
            images = generate_all(pipe, prompts, options.steps, options.batch)
        finally:
            disable_structured_guidance(pipe)
        rows.append(score_row("structured guidance", images, captions, stock, time.perf_counter() - start))
        log(f"structured guidance: accuracy {rows[-1]['accuracy']:.3f}, PSNR {rows[-1]['psnr_vs_stock']:.1f} dB")
    samplers = [(preset, BottleneckSampler.from_preset(pipe, preset)) for preset in options.bottleneck]
    samplers += [(format_stages(stages), BottleneckSampler(pipe, list(stages))) for stages in options.stages]
    for name, sampler in samplers:
        start = time.perf_counter()
        images = generate_all(pipe, prompts, None, options.batch, runner=sampler)
        steps = "/".join(str(s.steps) for s in sampler.stages)
        name = f"bottleneck {name} ({steps} steps)"
        rows.append(score_row(name, images, captions, stock, time.perf_counter() - start))
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
    from ...pipelines.noise_search import NoiseSearch
    from ...rewards import DEFAULT, load_reward

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
        row = score_row(name, np.stack(images), prompts, stock, time.perf_counter() - start)
        # generator passes per image: each seed's iterates are generated; all but the last are backpropagated
        row["forward_passes"] = seeds * max(1, iterations)
        row["backward_passes"] = seeds * max(0, iterations - 1)
        rows.append(row)
        log(f"{name}: accuracy {row['accuracy']:.3f} ({row['forward_passes']} forward + {row['backward_passes']} "
            f"backward passes per image)")  # fmt: skip
    return rows


def video_options(args: argparse.Namespace) -> VideoQualityOptions:
    """`bench quality --video`'s settings from parsed arguments; UsageError naming an image-only option or a bad
    value."""
    image_only = {"--presets": args.presets, "--stages": args.stages, "--structured": args.structured,
                  "--kinds": args.kinds, "--noise-seeds": args.noise_seeds != 1, "--noise": args.noise}  # fmt: skip
    given = [name for name, value in image_only.items() if value]
    if given:
        raise UsageError(f"bench quality --video compares sparse attention only; {', '.join(given)}: images only")
    try:
        return VideoQualityOptions(
            captions=args.captions, steps=args.steps, sparse=tuple(args.sparse), patterns=tuple(args.sparse_patterns),
            reshape=tuple(args.reshape or (True,)), block_sizes=tuple(args.sparse_block_sizes or (VIDEO_BLOCK_SIZE,)),
            **({} if args.frames is None else {"frames": args.frames}),
            **({} if args.caption_seed is None else {"seed": args.caption_seed}),
            coverage=tuple(args.coverage),
        )  # fmt: skip
    except ValueError as e:
        raise UsageError(f"bench quality --video: {e}") from e


def image_options(args: argparse.Namespace) -> QualityOptions:
    """`bench quality`'s image settings from parsed arguments; UsageError naming a video-only option or a bad value."""
    from ...cli.bottleneck import parse_stages

    video_only = {"--frames": args.frames, "--reshape": args.reshape, "--sparse-block-sizes": args.sparse_block_sizes,
                  "--coverage": args.coverage or None}  # fmt: skip
    given = [name for name, value in video_only.items() if value is not None]
    if given:
        raise UsageError(f"bench quality: {', '.join(given)}: clips only; add --video")
    if len(args.sparse_patterns) > 1:
        raise UsageError(f"bench quality: --sparse-patterns takes one pattern on images (several with --video), got "
                         f"{','.join(args.sparse_patterns)}")  # fmt: skip
    stages = tuple(tuple(parse_stages(text, "--stages")) for text in args.stages)  # UsageError naming the stage
    try:
        return QualityOptions(captions=args.captions, steps=args.steps, sparse=tuple(args.sparse),
                              sparse_pattern=args.sparse_patterns[0], bottleneck=tuple(args.presets), stages=stages,
                              seed=HELD_OUT_SEED if args.caption_seed is None else args.caption_seed,
                              structured=args.structured, kinds=tuple(args.kinds),
                              noise_seeds=args.noise_seeds,
                              noise_search=tuple(parse_noise_search(args.noise)) if args.noise else ())  # fmt: skip
    except ValueError as e:
        raise UsageError(f"bench quality: {e}") from e


def run_from_cli(args: argparse.Namespace) -> int:
    """`unbottle bench quality`: run on CUDA if present (else CPU), print the markdown table, write both files."""
    from ...cli.output import prepare_output_folder, remove_empty_folders

    options = video_options(args) if args.video else image_options(args)
    created: list[Path] = []
    out_dir = prepare_output_folder(args.output, created)  # before the run: a bad -o loses no work
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        run = run_video_quality if args.video else run_quality
        results = run(options, device=device)
        _, md_path = write_outputs(results, out_dir)
    except BaseException:  # a failed or interrupted run takes back the empty folders that -o made
        remove_empty_folders(created)
        raise
    print(md_path.read_text())
    return 0

"""The `unbottle` command line: image, video and text generation, reward-scored batches, benchmarks, calibration.

Exit codes: 0 ok, 1 a failure while running (model not loadable, output not writable), 2 bad usage or arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

from ..attention_processors.config import MAX_BLOCK_SIZE
from ..errors import CLIError, UsageError
from ..pipelines.bottleneck_presets import PRESETS
from .bottleneck import STAGES_HELP, check_bottleneck_args, make_sampler
from .noise import check_noise_args, make_search_runner
from .options import (
    MAX_GEN_LENGTH,
    MAX_SEED,
    MAX_STEPS,
    device_and_dtype,
    positive_int,
    run_options,
    seed,
    unit_fraction,
)  # fmt: skip
from .parallel import add_option as add_parallel_option


def _guidance_error(value: object) -> str | None:
    """The message for a guidance scale that is not a finite number ≥ 0, else None."""
    if isinstance(value, float) and math.isfinite(value) and value >= 0.0:
        return None
    return f"--guidance-scale must be a finite number ≥ 0, got {value}"


def _guidance_scale(text: str) -> float:
    """`--guidance-scale`: a finite number ≥ 0 (NaN or inf would silently disable or break the guidance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_guidance_error(text)) from None
    error = _guidance_error(value)
    if error:
        raise argparse.ArgumentTypeError(error)
    return value


def _density(text: str) -> float:
    return unit_fraction(text, "--sparse", "a density")


def _image_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    return path


def _generation_options(sub: argparse.ArgumentParser, *, video: bool) -> None:
    sub.add_argument("prompt", help="the text prompt")
    sub.add_argument("--model", metavar="ID|PATH", help="hub id or local pipeline folder (default: embedded model)")
    sub.add_argument("-o", "--output", default="unbottle.mp4" if video else "unbottle.png",
                     help="output file (.mp4)" if video else "output file (.png, .jpg, .webp)")  # fmt: skip
    sub.add_argument("--seed", type=seed, default=0, help="random seed in [0, 2**63 − 1] (default 0)")
    sub.add_argument("--steps", type=positive_int("--steps"),
                     help=f"denoising steps, ≤ {MAX_STEPS} (default: the model's)")  # fmt: skip
    sub.add_argument("--height", type=positive_int("--height"), help="pixels (default: the model's)")
    sub.add_argument("--width", type=positive_int("--width"), help="pixels (default: the model's)")
    if video:
        sub.add_argument("--frames", type=positive_int("--frames"), help="number of frames (default: the model's)")
        sub.add_argument("--fps", type=positive_int("--fps"), default=8, help="frames per second of the MP4")
        sub.add_argument("--image", type=_image_file, metavar="FILE",
                         help="the first frame, for image-to-video models (Wan image-to-video, CogVideoX I2V, ...)")
    sub.add_argument("--guidance-scale", type=_guidance_scale,
                     help="classifier-free guidance scale ≥ 0 (default: the model's)")  # fmt: skip
    sub.add_argument("--negative-prompt", help="negative prompt, for models that take one")
    run_options(sub)
    add_parallel_option(sub)
    sub.add_argument("--sparse", type=_density, metavar="DENSITY", help="sparse attention at this block density")
    sub.add_argument("--sparse-pattern", choices=["cached", "dynamic", "window"], default="cached",
                     help="which blocks: cached (SparseD, default), dynamic, window")  # fmt: skip
    sub.add_argument("--no-reshape", action="store_true", help="no Re-ttention statistical reshape")
    sub.add_argument("--sparse-block-size", type=positive_int("--sparse-block-size"),
                     help=f"tokens per block, ≤ {MAX_BLOCK_SIZE} (default 128; the embedded default models use 16 "
                     "for images, 64 for videos)")  # fmt: skip
    sub.add_argument("--bottleneck", metavar="PRESET",
                     help=f"bottleneck (high-low-high) sampling preset: {', '.join(PRESETS)}")  # fmt: skip
    sub.add_argument("--bottleneck-stages", metavar="STAGES", help="custom bottleneck stages: " + STAGES_HELP)
    sub.add_argument("--bottleneck-resample", choices=["bicubic-aa", "bilinear-aa", "lanczos", "nearest"],
                     default="bicubic-aa", help="latent resampling between stages (default bicubic-aa)")  # fmt: skip
    sub.add_argument("--structured", action="store_true", help="structured cross-attention guidance")
    sub.add_argument("--rewards", metavar="NAME[:W],...", help="rewards for noise exploration/optimization")
    sub.add_argument("--explore", type=positive_int("--explore"), metavar="N", help="best of N initial noises")
    sub.add_argument("--optimize", type=positive_int("--optimize"), metavar="ITERS",
                     help="reward-guided initial-noise optimization iterations")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `unbottle` command, with one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="unbottle",
        description="Faster, better-aligned diffusion on stock diffusers pipelines. With no --model, every verb "
        "runs on the embedded default model, offline, on the CPU.",
    )
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"unbottle {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _generation_options(verbs.add_parser("image", help="generate an image"), video=False)
    _generation_options(verbs.add_parser("video", help="generate a video (MP4)"), video=True)

    text = verbs.add_parser("text", help="generate text with a diffusion language model")
    text.add_argument("prompt", help="the text prompt")
    text.add_argument("--model", metavar="ID|PATH", help="hub id or local pipeline folder (default: embedded model)")
    text.add_argument("--gen-length", type=positive_int("--gen-length"),
                      help=f"tokens to generate, ≤ {MAX_GEN_LENGTH} and the model's positions (default: 4 on the "
                      "embedded retrieval model, else 16)")  # fmt: skip
    text.add_argument("--steps", type=positive_int("--steps", MAX_GEN_LENGTH),
                      help=f"denoising steps, ≤ {MAX_GEN_LENGTH} (default: the model's)")  # fmt: skip
    text.add_argument("--seed", type=seed, default=0, help="random seed in [0, 2**63 − 1] (default 0)")
    text.add_argument("-o", "--output", help="also write the text to this file")
    text.add_argument("--sparse", type=_density, metavar="DENSITY", help="SparseD sparse attention at this density")
    run_options(text)

    batch = verbs.add_parser("batch", help="reward-scored batch generation (resumable; multi-GPU with accelerate)")
    batch.add_argument("prompts", metavar="PROMPTS.txt", help="one prompt per line")
    batch.add_argument("--n", type=positive_int("--n"), default=4, help="candidates per prompt")
    batch.add_argument("--rewards", metavar="NAME[:W],...", help="rewards that score the candidates")
    batch.add_argument("-o", "--output", default="unbottle-batch", help="output folder")
    from .batch import add_arguments as add_batch_arguments

    add_batch_arguments(batch)

    from .bench import add_parser as add_bench_parser

    add_bench_parser(verbs)
    from .calibrate import add_parser as add_calibrate_parser

    add_calibrate_parser(verbs)
    return parser


def _check_search_seeds(args: argparse.Namespace) -> None:
    """`--explore N` runs seeds --seed … --seed + N − 1: all of them must be valid seeds (checked before loading)."""
    explore = getattr(args, "explore", None)
    if explore is not None and args.seed + explore - 1 > MAX_SEED:
        raise UsageError(
            f"--seed/--explore: --explore {explore} runs seeds {args.seed} … {args.seed + explore - 1}, past the "
            f"largest seed 2**63 − 1 = {MAX_SEED}; use --seed ≤ {MAX_SEED - explore + 1}"
        )


def _run(args: argparse.Namespace) -> int:
    from .output import IMAGE_SUFFIXES, VIDEO_SUFFIXES, prepare_output, remove_empty_folders

    if getattr(args, "guidance_scale", None) is not None and _guidance_error(args.guidance_scale):
        raise UsageError(_guidance_error(args.guidance_scale))  # batch's option, parsed as a plain float
    if args.verb == "bench":  # the suite's own runner; all but quality refuse without CUDA (exit 2)
        from .bench import run_from_cli as run_bench

        return run_bench(args)
    if args.verb == "batch":  # reward-scored batches
        from .batch import run_from_cli as run_batch

        return run_batch(args)
    if args.verb == "calibrate":  # sparse-attention patterns at a softmax-mass target
        from .calibrate import run_from_cli as run_calibrate

        return run_calibrate(args)
    check_noise_args(args)
    if not args.prompt.strip():
        raise UsageError("PROMPT must not be empty")

    stages = check_bottleneck_args(args) if args.verb != "text" else None
    _check_search_seeds(args)
    world = _parallel_world(args) if getattr(args, "parallel", None) else None
    suffixes = {"image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES, "text": None}[args.verb]
    created: list = []
    writes = args.output is not None and (world is None or world.rank == 0)  # under --parallel, rank 0 writes
    output = prepare_output(args.output, suffixes, created) if writes else None
    try:
        if world is None:
            return _generate(args, output, stages)
        from .parallel import process_group

        with process_group(world, args.device):
            return _generate(args, output, stages, world)
    except BaseException:  # a failed or interrupted run takes back the empty folders that -o made
        remove_empty_folders(created)
        raise


def _parallel_world(args: argparse.Namespace) -> object:
    """`--parallel`: the torchrun world, with this rank's device in args.device and progress bars on rank 0 only."""
    from .parallel import rank_device, torchrun_world

    world = torchrun_world()
    args.device = rank_device(device_and_dtype(args)[0], world)
    args.quiet = args.quiet or world.rank > 0
    return world


def _generate(args: argparse.Namespace, output: object, stages: list | None, world: object = None) -> int:
    """Load the model and generate with the checked options; write `output` (a Path, or None: text to stdout only, or
    a `--parallel` rank other than 0); `world` is the torchrun world under `--parallel`."""
    from ..defaults import EMBEDDED
    from .loading import load_pipeline

    device, dtype = device_and_dtype(args)
    default = EMBEDDED[args.verb] if args.model is None else None
    where = default.description if default else args.model
    print(f"unbottle {args.verb}: loading {where} on {device} ({str(dtype).removeprefix('torch.')})", file=sys.stderr)
    pipe = load_pipeline(args.model, args.verb, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=args.quiet)
    if world is not None:  # before sparse attention, which shards its patterns by the parallelism it finds
        from .parallel import enable_ulysses

        enable_ulysses(pipe, world)
    if getattr(args, "sparse", None) is not None:
        _enable_sparse(pipe, args, default)
    if getattr(args, "structured", False):
        _enable_structured(pipe)
    runner = make_sampler(pipe, args, stages) if args.verb != "text" else None  # a (checked) BottleneckSampler or None
    steps = args.steps if args.steps is not None else (default.steps if default and runner is None else None)
    runner = make_search_runner(pipe, args, runner) if args.verb != "text" else None  # NoiseSearch, or as is

    from .generate import generate_image, generate_text, generate_video

    if args.verb == "text":
        extra = dict(default.extra) if default else {}
        default_length = extra.pop("gen_length", 16)
        gen_length = args.gen_length if args.gen_length is not None else default_length
        text = generate_text(pipe, args.prompt, gen_length=gen_length, steps=steps, seed=args.seed, **extra)
        print(text)
        if output is not None:
            output.write_text(text + "\n")
        return 0
    height = args.height if args.height is not None else (default.height if default else None)
    width = args.width if args.width is not None else (default.width if default else None)
    guidance = args.guidance_scale if args.guidance_scale is not None else getattr(default, "guidance_scale", None)
    common = dict(steps=steps, seed=args.seed, height=height, width=width, guidance_scale=guidance,
                  negative_prompt=args.negative_prompt, runner=runner)  # fmt: skip
    if args.verb == "image":
        path = generate_image(pipe, args.prompt, output, **common)
    else:
        frames = args.frames if args.frames is not None else (default.frames if default else None)
        path = generate_video(pipe, args.prompt, output, frames=frames, fps=args.fps, image=args.image, **common)
    if path is not None:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _enable_sparse(pipe: object, args: argparse.Namespace, default: object | None) -> None:
    from ..attention_processors import SparseAttentionConfig, enable_sparse_attention

    try:
        if args.verb == "text":  # SparseD on the diffusion LM (pipe.model), through transformers' AttentionInterface
            steps = args.steps if args.steps is not None else (default.steps if default else None)
            # 20% dense steps, as a count when the steps are known (the stock pipeline announces no steps),
            # blocks of 32 tokens on the embedded 1,024-token model (SparseD's short-context setting), 128
            # otherwise; no reshape
            config = SparseAttentionConfig(
                density=args.sparse, block_size=32 if default else 128, pattern="cached", reshape=False,
                full_steps=max(1, round(0.2 * steps)) if steps else 0.2,
            )  # fmt: skip
        else:
            block = args.sparse_block_size or (default.sparse_block_size if default else 128)
            config = SparseAttentionConfig(
                density=args.sparse, pattern=args.sparse_pattern, reshape=not args.no_reshape, block_size=block
            )
        handle = enable_sparse_attention(pipe, config)
    except ValueError as e:
        raise UsageError(f"--sparse: {e}") from e
    where = (f"on {type(handle.model).__name__} (SparseD, {config.full_steps} dense steps)" if args.verb == "text"
             else f"{len(handle.layer_hooks)} self-attention layers")  # fmt: skip
    print(
        f"sparse attention: density {config.density}, {config.pattern} pattern, block {config.block_size}, reshape "
        f"{'on' if config.reshape else 'off'}, {where}",
        file=sys.stderr,
    )


def _enable_structured(pipe: object) -> None:
    from ..guidance import enable_structured_guidance

    try:
        enable_structured_guidance(pipe)
    except ValueError as e:
        raise UsageError(f"--structured: {e}") from e
    print("structured cross-attention guidance: on", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `unbottle` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # libraries' deprecation notices to each other are not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            return _run(args)
    except CLIError as e:
        print(f"unbottle {args.verb}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"unbottle {args.verb}: interrupted", file=sys.stderr)
        return 130

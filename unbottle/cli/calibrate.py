"""`unbottle calibrate PROMPT...`: cached sparse-attention patterns calibrated to a softmax-mass target, written to a
pattern file (`unbottle.load_head_patterns`), and their realized density printed.

    unbottle calibrate "a red circle" "a blue square" --coverage 0.95 --steps 4 -o patterns.safetensors
"""

from __future__ import annotations

import argparse
import sys

from ..attention_processors.config import MAX_BLOCK_SIZE
from ..errors import RunError, UsageError
from .options import positive_int, run_options, seed, unit_fraction


def _coverage(text: str) -> float:
    return unit_fraction(text, "--coverage", "a softmax mass")


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """The `calibrate` verb: prompts, model, coverage, block size, steps, seed, -o and the run options."""
    text = "calibrate sparse attention to a softmax-mass target; write its patterns"
    sub = verbs.add_parser("calibrate", help=text, description=(
        "Calibrate sparse attention (cached SparseD patterns) to keep COVERAGE of each (layer, head, query block) "
        "row's exact softmax mass, with the fewest key blocks; several prompts keep the union of their tiles. "
        "Writes the pattern file (load it with unbottle.load_head_patterns and the same config) and prints the "
        "realized density: kept tiles / all tiles, averaged over the layers."))  # fmt: skip
    sub.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompts to calibrate on")
    sub.add_argument("--model", metavar="ID|PATH", help="hub id or local pipeline folder (default: embedded model)")
    sub.add_argument("--coverage", type=_coverage, default=0.95,
                     help="softmax mass each row keeps, in (0, 1] (default 0.95)")  # fmt: skip
    sub.add_argument("--block-size", type=positive_int("--block-size", MAX_BLOCK_SIZE),
                     help=f"tokens per block, ≤ {MAX_BLOCK_SIZE} (default 128; 16 on the embedded model)")  # fmt: skip
    sub.add_argument("--steps", type=positive_int("--steps"),
                     help="denoising steps per prompt, ≤ 1000 (default: the model's); the patterns are made at the "
                     "last of the first 20%% (dense) steps: calibrate with the steps you generate with")  # fmt: skip
    sub.add_argument("--seed", type=seed, default=0, help="random seed in [0, 2**63 − 1] (default 0)")
    sub.add_argument("-o", "--output", required=True, metavar="FILE.safetensors", help="the pattern file to write")
    run_options(sub)


def run_from_cli(args: argparse.Namespace) -> int:
    """Run `unbottle calibrate` from parsed arguments; returns the exit code."""
    from .output import prepare_output, remove_empty_folders

    for prompt in args.prompts:
        if not prompt.strip():
            raise UsageError("PROMPT must not be empty")
    created: list = []
    output = prepare_output(args.output, (".safetensors",), created)
    try:
        density = _calibrate(args, output)
    except BaseException:  # a failed or interrupted run takes back the empty folders that -o made
        remove_empty_folders(created)
        raise
    print(f"realized density {density:.4f} (coverage {args.coverage})")
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace, output: object) -> float:
    import torch

    from ..attention_processors import SparseAttentionConfig, calibrate_sparse_attention
    from ..defaults import EMBEDDED
    from .generate import call_parameters, check_size
    from .loading import load_pipeline
    from .options import device_and_dtype

    device, dtype = device_and_dtype(args)
    default = EMBEDDED["image"] if args.model is None else None
    where = default.description if default else args.model
    print(f"unbottle calibrate: loading {where} on {device} ({str(dtype).removeprefix('torch.')})", file=sys.stderr)
    pipe = load_pipeline(args.model, "image", device=device, dtype=dtype, trust_remote_code=args.trust_remote_code)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=args.quiet)
    params = call_parameters(pipe)
    kwargs: dict = {"generator": torch.Generator().manual_seed(args.seed)}
    steps = args.steps if args.steps is not None else (default.steps if default else None)
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if default is not None:
        check_size(pipe, default.height, default.width, default.frames if "num_frames" in params else None)
        kwargs.update(height=default.height, width=default.width, guidance_scale=default.guidance_scale)
        if "num_frames" in params:
            kwargs["num_frames"] = default.frames
    if "output_type" in params:
        kwargs["output_type"] = "latent"  # the patterns come from the denoiser: no decoding
    block = args.block_size or (default.sparse_block_size if default else 128)
    config = SparseAttentionConfig(coverage=args.coverage, block_size=block, pattern="cached")
    try:
        return calibrate_sparse_attention(pipe, args.prompts, args.coverage, path=output, config=config, **kwargs)
    except ValueError as e:
        raise UsageError(f"calibrate: {e}") from e
    except OSError as e:
        raise RunError(f"-o/--output: cannot write {str(output)!r}: {e.strerror or e}") from e

"""Option types and options shared by the verbs (`image`, `video`, `text`, `batch`): bounded counts, seeds, the run
options (device, dtype, remote code, quiet) and the device/dtype they resolve to."""

from __future__ import annotations

import argparse
import math

from ..attention_processors.config import MAX_BLOCK_SIZE
from ..errors import UsageError

MAX_SEED = 2**63 - 1  # seeds are signed 64-bit, as torch.Generator, BatchConfig and NoiseSearchConfig take them
MAX_STEPS = 1000  # denoising steps: the training timesteps of diffusers' schedulers
MAX_GEN_LENGTH = 8192  # generated tokens (and text steps: a diffusion LM fixes at least one token a step)
# the largest value of the count options that have one, on every verb that takes them
UPPER_BOUNDS = {"--steps": MAX_STEPS, "--gen-length": MAX_GEN_LENGTH, "--sparse-block-size": MAX_BLOCK_SIZE}


def unit_fraction(text: str, name: str, what: str) -> float:
    """`text` as a number in (0, 1] (a density, a softmax mass), argparse errors naming `name` and `what` it is."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be {what} in (0, 1], got {text.strip()!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"{name} must be {what} in (0, 1], got {value}")
    return value


def positive_int(name: str, high: int | None = None):
    """An argparse type: an integer ≥ 1 (≤ `high`, or the bound UPPER_BOUNDS gives `name`), errors naming `name`."""
    high = high if high is not None else UPPER_BOUNDS.get(name)
    allowed = "≥ 1" if high is None else f"in [1, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer {allowed}, got {text!r}") from None
        if value < 1 or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} must be an integer {allowed}, got {value}")
        return value

    return parse


def seed(text: str) -> int:
    """`--seed` of every verb: an integer in [0, 2**63 − 1]."""
    allowed = f"--seed must be an integer in [0, 2**63 − 1] = [0, {MAX_SEED}]"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{allowed}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{allowed}, got {value}")
    return value


def run_options(sub: argparse.ArgumentParser) -> None:
    """Add --device, --dtype, --trust-remote-code and -q/--quiet to a verb."""
    sub.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    sub.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                     help="weights dtype (default auto: bfloat16 on cuda, float32 on cpu)")  # fmt: skip
    sub.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def device_and_dtype(args: argparse.Namespace):
    """(device, dtype) from --device/--dtype: cuda if available, bf16 on cuda and fp32 on cpu by default."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise UsageError(f"--device {device!r} is not usable here: {str(e).splitlines()[0]}") from e
    if args.dtype == "auto":
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    return device, dtype

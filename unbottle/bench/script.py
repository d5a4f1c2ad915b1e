"""What every benchmark entry point shares: the CUDA check, a writable output folder, the script's main(), and the
parsers of options that several suites take."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import CLIError, RunError, UsageError


def writable_output(args: argparse.Namespace, no_cuda_message: str) -> Path:
    """The output folder of `args`, created and probed; UsageError without CUDA, RunError if it cannot be written."""
    if not torch.cuda.is_available():
        raise UsageError(no_cuda_message)
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".unbottle-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to {out_dir}: {e}") from e
    return out_dir


def run_and_print(
    args: argparse.Namespace, command: str | None, no_cuda_message: str,
    options_from_args: Callable[[argparse.Namespace], object], run_benchmark: Callable[[object, Path, str], dict],
    report_name: Callable[[dict], str],
) -> dict:  # fmt: skip
    """What every `unbottle bench SUITE` does first: refuse without CUDA, run the suite on `args`' options into its
    output folder (`command` recorded, the CLI's by default), print the markdown report; returns the results."""
    out_dir = writable_output(args, no_cuda_message)
    options = options_from_args(args)
    command = command or shlex.join(["unbottle", *sys.argv[1:]])
    results = run_benchmark(options, out_dir, command)
    print((out_dir / report_name(results)).read_text(), flush=True)
    return results


def build_parser(
    prog: str | None, description: str, add_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """A benchmark script's parser: -o plus the benchmark's own options."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-o", "--output", default="bench/results", help="output folder (default bench/results)")
    add_arguments(parser)
    return parser


def script_main(
    argv: list[str] | None, prog: str, parser: argparse.ArgumentParser,
    run_from_cli: Callable[[argparse.Namespace, str], int],
) -> int:  # fmt: skip
    """Parse, run, and turn the CLI's errors into a one-line message and its exit code."""
    args = parser.parse_args(argv)
    command = shlex.join(["python", prog, *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_from_cli(args, command)
    except CLIError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code


def parse_names(text: str, allowed: tuple[str, ...] | dict, option: str) -> list[str]:
    """Comma-separated names from `allowed`, duplicates dropped; argparse's type error naming `option` otherwise."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{option} takes names from {', '.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(names))


def parse_densities(text: str, option: str = "--densities") -> list[float]:
    """Block densities in (0, 1], comma-separated, e.g. `1,0.1,0.03`; errors name `option`."""
    from ..cli.options import unit_fraction

    return [unit_fraction(part, option, "a number (each of the list)") for part in text.split(",")]

"""What every GPU benchmark entry point shares: the CUDA check, a writable output folder, the script's main()."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def jsonable(value: object) -> object:
    """Non-finite floats as strings (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json_and_markdown(results: dict, out_dir: str | Path, stem: str, markdown: str) -> dict[str, Path]:
    """`stem`.json (non-finite floats as strings) and `stem`.md in `out_dir`; returns {"json": path, "md": path}."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(jsonable(results), indent=2) + "\n")
    paths["md"].write_text(markdown)
    return paths


def writable_output(args: argparse.Namespace, no_cuda_message: str) -> Path:
    """The output folder of `args`, created and probed; UsageError without CUDA, RunError if it cannot be written."""
    from ..cli.errors import RunError, UsageError

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
    from ..cli.errors import CLIError

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


def share_quick_and_seed(parser: argparse.ArgumentParser, quick_help: str, seed_help: str) -> None:
    """Add --quick / --seed, or append this suite's meaning to their help where another suite added them already."""
    for flag, help_text in (("--quick", quick_help), ("--seed", seed_help)):
        action = parser._option_string_actions.get(flag)
        if action is not None:
            action.help = f"{action.help}; {help_text}"
        elif flag == "--quick":
            parser.add_argument("--quick", action="store_true", help=help_text)
        else:
            parser.add_argument("--seed", type=int, default=0, help=f"{help_text} (default 0)")

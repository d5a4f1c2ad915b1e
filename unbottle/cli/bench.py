"""`unbottle bench SUITE`: one sub-command per benchmark suite, each with its own options (`unbottle bench SUITE
--help`); the suites live in `unbottle.bench`."""

from __future__ import annotations

import argparse
import importlib

from ..bench import SUITES


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """The `bench` verb: a sub-parser per suite with -o and the suite's own options."""
    bench = verbs.add_parser("bench", help="benchmarks: JSON + markdown + plots",
                             description="Benchmarks: each suite writes JSON + markdown (+ plots) to -o.")  # fmt: skip
    suites = bench.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, help_text in SUITES.items():
        options = importlib.import_module(f"..bench.{name}.options", __package__)
        sub = suites.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-o", "--output", default="bench-results", help="output folder (default bench-results)")
        options.add_arguments(sub)


def run_from_cli(args: argparse.Namespace) -> int:
    """Run `unbottle bench SUITE` from parsed arguments; returns the exit code."""
    run = importlib.import_module(f"..bench.{args.suite}.run", __package__)
    return run.run_from_cli(args)

"""Sparse vs dense generation time on the CPU, in one process: the shipped shapes models (image and video).

    python bench/cpu_sparse.py -o bench/results               # ~6 minutes on 2 cores
    python bench/cpu_sparse.py --kinds t2i --repeats 3 -o /tmp/out

The pipeline loads once. Each repeat times one dense generation, then one generation per sparse configuration
(density × pattern × reshape), each enabled fresh before its generation and disabled after, so a sparse run pays for
making its patterns as a one-off command would. Wall and process CPU seconds are recorded; the ratio is the median
sparse time over the median dense time of the same run. Writes cpu-sparse-<kinds>.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unbottle  # noqa: E402
from unbottle.defaults import EMBEDDED  # noqa: E402
from unbottle.shapes.pretrained import call_defaults, load_pipeline  # noqa: E402

DENSITIES, PATTERNS, RESHAPE = (0.1, 0.3), ("cached", "window", "dynamic"), (True, False)
CLIP_FRAMES = 17  # 5 latent frames: 1,280 tokens per attention call, the clip its results table reports


def generate(pipe, kind: str, steps: int) -> None:
    """One generation of the shapes model at its trained size, latents only (the VAE is the same on both sides)."""
    args = dict(call_defaults(kind)) | {"num_inference_steps": steps}
    if kind == "t2v":
        args["num_frames"] = CLIP_FRAMES
    pipe("a red cube moving left", **args, generator=torch.Generator().manual_seed(0), output_type="latent")


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_kind(kind: str, repeats: int, steps: int) -> list[dict]:
    pipe = load_pipeline(kind)
    pipe.set_progress_bar_config(disable=True)
    block = EMBEDDED["video" if kind == "t2v" else "image"].sparse_block_size
    configs = [unbottle.SparseAttentionConfig(density=d, pattern=p, reshape=r, block_size=block)
               for d, p, r in itertools.product(DENSITIES, PATTERNS, RESHAPE)]  # fmt: skip
    generate(pipe, kind, steps)  # warm-up: first-call allocations and kernel selection
    dense, sparse = [], {i: [] for i in range(len(configs))}
    for _ in range(repeats):
        dense.append(timed(lambda: generate(pipe, kind, steps)))
        for i, config in enumerate(configs):
            handle = unbottle.enable_sparse_attention(pipe, config)
            sparse[i].append(timed(lambda: generate(pipe, kind, steps)))
            handle.disable()
    rows = []
    dense_wall, dense_cpu = (statistics.median(t[j] for t in dense) for j in (0, 1))
    dense_min = min(t[0] for t in dense)
    for i, config in enumerate(configs):
        wall, cpu = (statistics.median(t[j] for t in sparse[i]) for j in (0, 1))
        wall_min = min(t[0] for t in sparse[i])
        rows.append({"model": kind, "density": config.density, "pattern": config.pattern, "reshape": config.reshape,
                     "block": block, "dense_wall_s": dense_wall, "sparse_wall_s": wall,
                     "ratio_wall": wall / dense_wall, "dense_cpu_s": dense_cpu, "sparse_cpu_s": cpu,
                     "ratio_cpu": cpu / dense_cpu, "dense_wall_min_s": dense_min, "sparse_wall_min_s": wall_min,
                     "ratio_wall_min": wall_min / dense_min})  # fmt: skip
        print(f"{kind} d={config.density} {config.pattern} reshape={config.reshape}: wall {wall:.3f}/{dense_wall:.3f}"
              f" = {wall / dense_wall:.3f}, cpu {cpu / dense_cpu:.3f}, min {wall_min / dense_min:.3f}", flush=True)
    return rows


def write(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-sparse-{'-'.join(meta['kinds'])}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Sparse vs dense generation on the CPU, in one process: the shapes models", "",
        f"Command: `{meta['command']}`. Machine: {meta['machine']}, torch {meta['torch']}, fp32, {meta['threads']} "
        f"threads; load average before / after: {meta['load_before']} / {meta['load_after']}. {meta['steps']} steps, "
        f"{meta['repeats']} repeats: medians, and the ratio of the fastest runs; each sparse generation includes "
        "making its patterns.", "",
        "| model | density | pattern | reshape | block | dense wall s | sparse wall s | ratio wall | ratio CPU "
        "| ratio of minima |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['density']} | {r['pattern']} | {'on' if r['reshape'] else 'off'} | "
                     f"{r['block']} | {r['dense_wall_s']:.3f} | {r['sparse_wall_s']:.3f} | "
                     f"**{r['ratio_wall']:.2f}** | {r['ratio_cpu']:.2f} | {r['ratio_wall_min']:.2f} |")  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="t2i,t2v", help="shapes models: t2i, t2v (default both)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("-o", "--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in ("t2i", "t2v"):
            parser.error(f"--kinds: {k!r} is not a shapes diffusion model; choose t2i or t2v")
    if args.repeats < 1 or args.steps < 1:
        parser.error(f"--repeats and --steps must be ≥ 1, got {args.repeats} and {args.steps}")
    meta = {"command": "python bench/cpu_sparse.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_before": round(os.getloadavg()[0], 2), "kinds": kinds,
            "steps": args.steps, "repeats": args.repeats}  # fmt: skip
    rows = [row for kind in kinds for row in run_kind(kind, args.repeats, args.steps)]
    meta["load_after"] = round(os.getloadavg()[0], 2)
    write(rows, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The noise-search benchmark's results: the markdown report (the plain baseline, one row per NoiseSearch setting,
the targets, ReNO's numbers for context) and the files (noise-<gpu>[-variants][-size][-quick].json, .md)."""

from __future__ import annotations

from pathlib import Path

from ..results import fmt, gpu_tag, write_json_and_markdown
from .options import DEFAULT_VARIANTS, RENO_A100, SIZE, TARGET_PEAK_GB, TARGET_S_PER_IT, TIMING_DEFINITION


def _met(value: bool | None) -> str:
    return "—" if value is None else ("✓" if value else "✗")


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, the plain baseline, one row per NoiseSearch setting, targets, errors."""
    size = results.get("options", {}).get("size", SIZE)
    params = results.get("parameters") or {}
    millions = {k: f"{v / 1e6:.1f}M" for k, v in params.items()}
    plain = results.get("plain") or {}
    shapes = [f"- real-size: {results.get('real_size', '')}", f"- not real-size: {results.get('not_real_size', '')}"]
    shapes = shapes if results.get("real_size_models") else []
    lines = [
        f"# Noise-search benchmark, {results.get('gpu', '?')} ({results.get('dtype')}, "
        f"{results.get('models', 'SD-Turbo-shaped')} pipeline, random weights, {size}×{size})",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, diffusers {results.get('diffusers')}, open_clip {results.get('open_clip')}, "
        f"CUDA {results.get('cuda')}, unbottle {results.get('unbottle')} ({results.get('git_commit') or 'no git'}); "
        f"{results.get('started', '')}",
        "",
        f"- pipeline: StableDiffusionPipeline, UNet {millions.get('unet', '?')}, VAE {millions.get('vae', '?')}, "
        f"text encoder {millions.get('text_encoder', '?')} parameters; Euler (trailing), 1 step, guidance 0",
        f"- rewards: {', '.join(f'{n} ×{w:g}' for n, w in results.get('reward_weights', {}).items())} on open_clip "
        f"{results.get('reward_model')} ({millions.get('hps', '?')} + {millions.get('clip', '?')})",
        f"- NoiseSearch: 1 seed, {results.get('options', {}).get('warmup')} warm-up + "
        f"{results.get('options', {}).get('iterations')} timed iterations per row",
        *shapes,
        f"- time: {results.get('timing', TIMING_DEFINITION)}",
        f"- setup: pipeline built in {fmt(results.get('setup_s', {}).get('pipeline'), 1)} s, rewards in "
        f"{fmt(results.get('setup_s', {}).get('rewards'), 1)} s",
        "",
        f"plain generation (no grad): {fmt(plain.get('s'), 3)} s, peak {fmt(plain.get('peak_gb'))} GB"
        + (f" — {plain['error']}" if plain.get("error") else ""),
        "",
        "| variant | checkpointing | batched VJP | compiled | s/it | it/s | × plain generation | peak GB | peak GiB | "
        "reserved GiB | weights GiB | timed its | iterations s | first warm-up s | ≤ 0.25 s/it | ≤ 12 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.get("rows", []):
        runs = ", ".join(f"{t:.3f}" for t in r["times_s"]) or "—"
        lines.append(
            f"| {r['variant']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{'on' if r['batched_vjp'] else 'off'} | {'on' if r.get('compile') else 'off'} | "
            f"{fmt(r['s_per_it'], 3)} | {fmt(r['it_per_s'])} | "
            f"{fmt(r['vs_plain'], 1, '×')} | {fmt(r['peak_gb'])} | {fmt(r['peak_gib'])} | "
            f"{fmt(r['reserved_gib'])} | {fmt(r['weights_gib'])} | {r['timed_iterations']}/{r['iterations']} | "
            f"{runs} | {fmt(r['warmup_s'][0] if r['warmup_s'] else None, 1)} | {_met(r['meets_time'])} | "
            f"{_met(r['meets_memory'])} |"
        )
    reno = results.get("reno_a100", RENO_A100)
    lines += [
        "",
        f"Targets: ≤ {TARGET_S_PER_IT:g} s/it and ≤ {TARGET_PEAK_GB:g} GB peak (10⁹ bytes, "
        f"max_memory_allocated). Context: ReNO's SD-Turbo numbers on an A100, {reno['s_per_it']:g} s/it and "
        f"{reno['peak_gb']:g} GB.",
        "",
    ]
    notes = [f"{r['variant']}: {r['stopped']}" for r in results.get("rows", []) if r.get("stopped")]
    notes += [f"{r['variant']}: non-finite loss (random weights in fp16)" for r in results.get("rows", [])
              if r.get("loss_finite") is False]  # fmt: skip
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    errors = [f"{r['variant']}: {r['error']}" for r in results.get("rows", []) if r.get("error")]
    errors += [f"plain generation: {plain['error']}"] if plain.get("error") else []
    errors += [f"setup: {results['setup_error']}"] if results.get("setup_error") else []
    if errors:
        lines += ["## Errors", "", *(f"- {e}" for e in errors), ""]
    if results.get("wall_s") is not None:
        lines.append(f"total benchmark wall time {results['wall_s']} s")
    return "\n".join(lines).rstrip() + "\n"


def output_stem(results: dict) -> str:
    """noise-<gpu>, plus the variants when a subset ran, the size when not 512, and -quick."""
    options = results.get("options", {})
    stem = f"noise-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    variants = options.get("variants") or list(DEFAULT_VARIANTS)
    if list(variants) != list(DEFAULT_VARIANTS):
        stem += "-" + "_".join(variants)
    if options.get("size", SIZE) != SIZE:
        stem += f"-{options['size']}"
    return stem + ("-quick" if options.get("quick") else "")


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write noise-<gpu>.json and .md (CARINOX / ReNO noise search); return {kind: path}."""
    return write_json_and_markdown(results, out_dir, output_stem(results), markdown_report(results))

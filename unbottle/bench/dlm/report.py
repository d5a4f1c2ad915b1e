"""The diffusion-LM benchmark's results (SparseD on LLaDA-8B shapes): same-run ratios, composed generation times, the
64k target, the markdown report and the files (dlm-<gpu>[-tags].json, .md)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import fmt, gpu_tag, write_json_and_markdown
from .model import LAYERS, composed_seconds, schedule_counts
from .options import (
    COMPOSED_STEPS,
    CONTEXTS,
    DENSITIES,
    FULL_STEPS,
    GEN_STEPS,
    MODES,
    QUICK_CONTEXTS,
    SECTIONS,
    SPARSE_DENSE_BACKEND,
    TARGET_CONTEXT,
    TARGET_SPEEDUP,
    TIMING_DEFINITION,
)


def median(values: Sequence[float]) -> float | None:
    """The median, or None of nothing."""
    return statistics.median(values) if values else None


def _rows(results: dict, section: str, context: int, **match: Any) -> list[dict]:
    return [r for r in results.get(f"{section}_rows", []) if r["context"] == context
            and all(r.get(k) == v for k, v in match.items())]  # fmt: skip


def _time_of(results: dict, section: str, context: int, **match: Any) -> float | None:
    """The measured seconds of the first matching row (no error), or None."""
    for r in _rows(results, section, context, **match):
        if r.get("s") is not None and not r.get("error"):
            return r["s"]
    return None


def _ratio(base: float | None, value: float | None) -> float | None:
    return base / value if base and value else None


def composed_estimates(results: dict) -> list[dict]:
    """Composed SparseD generation times (Wang et al. 2025) at T = gen_steps, 128, 1024 from the per-step rows, with
    speed-ups vs dense-cudnn and dense-flash (T · dense step)."""
    options = results.get("options", {})
    full = options.get("full_steps", FULL_STEPS)
    steps = sorted({options.get("gen_steps", GEN_STEPS), *COMPOSED_STEPS})
    out = []
    for context in dict.fromkeys(r["context"] for r in results.get("steps_rows", [])):
        dense = {m: _time_of(results, "steps", context, mode=m, kind="dense") for m in ("dense-cudnn", "dense-flash")}
        pairs = dict.fromkeys((r["mode"], r["density"]) for r in _rows(results, "steps", context, kind="pattern"))
        for mode, density in pairs:
            pattern = _time_of(results, "steps", context, mode=mode, density=density, kind="pattern")
            sparse = _time_of(results, "steps", context, mode=mode, density=density, kind="sparse")
            if pattern is None or sparse is None:
                continue
            for t in steps:
                entry = {"context": context, "mode": mode, "density": density, "steps": t}
                for name, d in dense.items():
                    key = name.removeprefix("dense-")
                    s = None if d is None else composed_seconds(d, pattern, sparse, t, full)
                    entry[f"s_{key}"], entry[f"dense_s_{key}"] = s, (None if d is None else t * d)
                    entry[f"vs_dense_{key}"] = _ratio(entry[f"dense_s_{key}"], s)
                out.append(entry)
    return out


def finish(results: dict) -> dict:
    """Fill the same-run ratios (dense time / row time), composed estimates and the 64k target."""
    options = results.get("options", {})
    full = options.get("full_steps", FULL_STEPS)
    for r in results.get("steps_rows", []):
        for name in ("dense-cudnn", "dense-flash"):
            base = _time_of(results, "steps", r["context"], mode=name, kind="dense")
            r[f"vs_{name.replace('-', '_')}"] = _ratio(base, r["s"])
    for r in results.get("generation_rows", []):
        c = r["context"]
        r["vs_dense_cudnn"] = _ratio(_time_of(results, "generation", c, mode="dense-cudnn"), r["s"])
        flash, r["vs_dense_flash_basis"] = _time_of(results, "generation", c, mode="dense-flash"), "generation"
        if flash is None:  # no dense-flash generation ran: T × its step time (the sampling left out)
            step = _time_of(results, "steps", c, mode="dense-flash", kind="dense")
            flash, r["vs_dense_flash_basis"] = (None, None) if step is None else (r["steps"] * step, "T × step")
        r["vs_dense_flash"] = _ratio(flash, r["s"])
        dense = _time_of(results, "steps", c, mode="dense-cudnn" if r["mode"] != "dense-flash" else "dense-flash",
                         kind="dense")  # fmt: skip
        if MODES[r["mode"]][0] == "dense":
            r["composed_s"] = None if dense is None else r["steps"] * dense
        else:
            pattern = _time_of(results, "steps", c, mode=r["mode"], density=r["density"], kind="pattern")
            sparse = _time_of(results, "steps", c, mode=r["mode"], density=r["density"], kind="sparse")
            known = None not in (dense, pattern, sparse)
            r["composed_s"] = composed_seconds(dense, pattern, sparse, r["steps"], full) if known else None
        r["composed_over_measured"] = _ratio(r["composed_s"], r["s"])
    results["composed"] = composed_estimates(results)
    results["target"] = evaluate_target(results)
    return results


def evaluate_target(results: dict) -> dict:
    """The target at 64k: a SparseD whole generation ≥ 2× faster than dense (paper: 1.5× over FlashAttention).

    `met` is decided by the measured whole generations at 64k (vs dense-cudnn, same run; None if none ran); the
    entries also list the cached sparse step and the composed T = gen_steps / 128 / 1024 generations."""
    entries = []
    c = TARGET_CONTEXT
    for r in _rows(results, "generation", c):
        if MODES[r["mode"]][0] == "sparse" and r["vs_dense_cudnn"] is not None:
            entries.append({"what": f"measured generation, T={r['steps']}, vs dense-cudnn", "mode": r["mode"],
                            "density": r["density"], "value": r["vs_dense_cudnn"], "measured": True})  # fmt: skip
    for r in _rows(results, "steps", c, kind="sparse"):
        for base in ("cudnn", "flash"):
            if r[f"vs_dense_{base}"] is not None:
                what = f"cached sparse step vs dense-{base} step"
                entries.append({"what": what, "mode": r["mode"], "density": r["density"],
                                "value": r[f"vs_dense_{base}"], "measured": True})  # fmt: skip
    for e in results.get("composed", []):
        if e["context"] != c:
            continue
        for base in ("cudnn", "flash"):
            if e[f"vs_dense_{base}"] is not None:
                what = f"composed generation, T={e['steps']}, vs dense-{base}"
                entries.append({"what": what, "mode": e["mode"], "density": e["density"],
                                "value": e[f"vs_dense_{base}"], "measured": False})  # fmt: skip
    for e in entries:
        e["met"] = e["value"] >= TARGET_SPEEDUP
    generations = [e for e in entries if e["what"].startswith("measured generation")]
    met = any(e["met"] for e in generations) if generations else None
    return {"context": c, "speedup": TARGET_SPEEDUP, "met": met, "entries": entries}


# ---- markdown, files -------------------------------------------------------------------------------------------


def context_label(context: int) -> str:
    """A context as the tables write it: 65536 → 64k."""
    return f"{context // 1024}k" if context % 1024 == 0 else str(context)


def density_label(value: float | None) -> str:
    """A density as the tables write it (— for the dense modes)."""
    return "—" if value is None else f"{value:g}"


def row_note(row: dict) -> str:
    """Why a row has no time: skipped (the budget) or its error."""
    return "; ".join(x for x in (f"skipped: {row['skipped']}" if row.get("skipped") else "",
                                 f"error: {row['error']}" if row.get("error") else "") if x)  # fmt: skip


def markdown_report(results: dict) -> str:
    """The results as markdown (SparseD on LLaDA-8B shapes): setup, per-step and generation tables, composed
    estimates, the 64k target, notes."""
    options = results.get("options", {})
    model = results.get("model", {})
    config = model.get("config", {})
    n_dense, n_pattern, n_sparse = schedule_counts(options.get("gen_steps", GEN_STEPS),
                                                   options.get("full_steps", FULL_STEPS))  # fmt: skip
    lines = [
        f"# Diffusion-LM benchmark, {results.get('gpu', '?')}: {model.get('description', '?')}",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, transformers {results.get('transformers')}, diffusers "
        f"{results.get('diffusers')}, triton {results.get('triton')}, CUDA {results.get('cuda')}, cuDNN "
        f"{results.get('cudnn')}, unbottle {results.get('unbottle')} ({results.get('git_commit') or 'no git'}); "
        f"{results.get('started', '')}",
        "",
        f"- model: GemmaForCausalLM, {config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads ({config.get('num_key_value_heads')} KV) × "
        f"{config.get('head_dim')}, {config.get('hidden_act')}-gated MLP {config.get('intermediate_size')}, vocab "
        f"{config.get('vocab_size')}, bidirectional (is_causal {model.get('is_causal')}); "
        f"{fmt((model.get('parameters') or 0) / 1e9, 2)}B parameters, random weights, {results.get('dtype')}, "
        f"built in {fmt(results.get('setup_s'), 1)} s ({fmt(results.get('weights_gib'), 1)} GiB)"
        + ("" if model.get("real_size") else " — not real-size"),
        f"- inputs: batch 1, context = random prompt + {options.get('gen_length')} mask tokens (id "
        f"{options.get('mask_token_id')}), no attention mask; whole generation: DiffusionLMPipeline, one block, "
        f"T={options.get('gen_steps')} steps, low-confidence remasking",
        f"- SparseD: SparseAttentionConfig(density=d, pattern='cached', reshape=False, block_size="
        f"{options.get('block_size')}, full_steps={options.get('full_steps')}) → {n_dense} dense steps, "
        f"{n_pattern} pattern step, {n_sparse} cached sparse steps; densities "
        f"{', '.join(density_label(d) for d in options.get('densities', []))}; sparse modes' dense steps on "
        f"{SPARSE_DENSE_BACKEND}",
        f"- time: {results.get('timing', TIMING_DEFINITION)}",
        "",
    ]
    if results.get("steps_rows"):
        lines += [
            "## Per step",
            "",
            "| context | mode | density | step | s | runs s | vs dense-cudnn | vs dense-flash | patterns added | "
            "sparse calls (fast / masked) | peak GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["steps_rows"]:
            runs = ", ".join(f"{t:.3f}" for t in r["times_s"]) or "—"
            calls = (f"{'/'.join(map(str, r['fast_calls']))} / {'/'.join(map(str, r['masked_reference_calls']))}"
                     if r["fast_calls"] else "—")  # fmt: skip
            lines.append(
                f"| {context_label(r['context'])} | {r['mode']} | {density_label(r['density'])} | {r['kind']} | "
                f"{fmt(r['s'], 3)} | {runs} | {fmt(r['vs_dense_cudnn'], 2, '×')} | "
                f"{fmt(r['vs_dense_flash'], 2, '×')} | {'/'.join(map(str, r['patterns_added'])) or '—'} | {calls} | "
                f"{fmt(r['peak_gib'], 1)} | {row_note(r)} |"
            )
        lines.append("")
    if results.get("generation_rows"):
        lines += [
            f"## Whole generation (T={options.get('gen_steps')})",
            "",
            "| context | mode | density | s | vs dense-cudnn | vs dense-flash | composed s | composed / measured | "
            "dense step s | pattern step s | sparse step s | step kinds | peak GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["generation_rows"]:
            kinds = {True: "✓", False: "✗", None: "—"}[r["kinds_ok"]]
            star = "*" if r.get("vs_dense_flash_basis") == "T × step" else ""
            lines.append(
                f"| {context_label(r['context'])} | {r['mode']} | {density_label(r['density'])} | {fmt(r['s'], 2)} | "
                f"{fmt(r['vs_dense_cudnn'], 2, '×')} | {fmt(r['vs_dense_flash'], 2, '×' + star)} | "
                f"{fmt(r['composed_s'], 2)} | {fmt(r['composed_over_measured'], 2)} | {fmt(r['dense_step_s'], 3)} | "
                f"{fmt(r['pattern_step_s'], 3)} | {fmt(r['sparse_step_s'], 3)} | {kinds} | {fmt(r['peak_gib'], 1)} | "
                f"{row_note(r)} |"
            )
        lines += ["", "step kinds ✓: every step was the kind the schedule claims (engine counters: dense steps make "
                  "no sparse call, the pattern step adds one pattern per layer, cached steps none). ×*: no "
                  "dense-flash generation ran, so the baseline is T × the dense-flash step (the sampling left out).",
                  ""]  # fmt: skip
    if results.get("composed"):
        lines += [
            "## Composed generations (from the per-step rows: n_dense·dense + pattern + n_sparse·sparse)",
            "",
            "| context | mode | density | T | s (dense steps cuDNN) | vs dense-cudnn | s (dense steps flash) | "
            "vs dense-flash |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in results["composed"]:
            lines.append(
                f"| {context_label(e['context'])} | {e['mode']} | {density_label(e['density'])} | {e['steps']} | "
                f"{fmt(e['s_cudnn'], 2)} | {fmt(e['vs_dense_cudnn'], 2, '×')} | {fmt(e['s_flash'], 2)} | "
                f"{fmt(e['vs_dense_flash'], 2, '×')} |"
            )
        lines.append("")
    target = results.get("target") or {}
    met = {True: "met", False: "not met", None: "not measured (no 64k whole generation in this run)"}
    lines += [f"## Target: ≥ {TARGET_SPEEDUP:g}× over dense at {context_label(TARGET_CONTEXT)} (paper: 1.5× over "
              "FlashAttention at 1,024 steps)", "",
              f"measured whole generation: **{met[target.get('met')]}**", ""]  # fmt: skip
    if target.get("entries"):
        lines += ["| what | mode | density | speed-up | ≥ 2× |", "|---|---|---|---|---|"]
        for e in target["entries"]:
            lines.append(f"| {e['what']} | {e['mode']} | {density_label(e['density'])} | {fmt(e['value'], 2, '×')} | "
                         f"{'yes' if e['met'] else 'no'} |")  # fmt: skip
        lines.append("")
    rows = results.get("steps_rows", []) + results.get("generation_rows", [])
    skipped = [r for r in rows if r.get("skipped")]
    errors = [r for r in rows if r.get("error")]
    if skipped:
        lines += [f"{len(skipped)} row(s) skipped (budget {options.get('budget_s')} s).", ""]
    if errors or results.get("setup_error"):
        lines += ["## Errors", ""]
        lines += [f"- setup: {results['setup_error']}"] if results.get("setup_error") else []
        lines += [f"- {r['section']} {context_label(r['context'])} {r['mode']} {density_label(r['density'])} "
                  f"{r.get('kind', '')}: {r['error']}" for r in errors]  # fmt: skip
        lines.append("")
    if results.get("wall_s") is not None:
        lines.append(f"total benchmark wall time {results['wall_s']} s")
    return "\n".join(lines).rstrip() + "\n"


def output_stem(results: dict) -> str:
    """dlm-<gpu>, plus the depth when not 32 layers, contexts / densities / section when not the defaults, -quick."""
    options = results.get("options", {})
    stem = f"dlm-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    if options.get("layers", LAYERS) != LAYERS:
        stem += f"-{options['layers']}l"
    quick = bool(options.get("quick"))
    contexts = list(options.get("contexts") or CONTEXTS)
    if contexts != list(QUICK_CONTEXTS if quick else CONTEXTS):
        stem += "-" + "_".join(context_label(c) for c in contexts)
    densities = list(options.get("densities") or DENSITIES)
    if densities != list(DENSITIES):
        stem += "-d" + "_".join(f"{d:g}" for d in densities)
    sections = list(options.get("sections") or SECTIONS)
    if sections != list(SECTIONS):
        stem += "-" + "_".join(sections)
    return stem + ("-quick" if quick else "")


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write dlm-<gpu>.json and .md (SparseD on LLaDA-8B shapes); return {kind: path}."""
    return write_json_and_markdown(results, out_dir, output_stem(results), markdown_report(results))


def failed_rows(results: dict) -> list[dict]:
    """Rows that recorded an error (skipped rows are not failures)."""
    return [r for r in results.get("steps_rows", []) + results.get("generation_rows", []) if r.get("error")]

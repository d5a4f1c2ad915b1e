"""The end-to-end benchmark's results: speed-ups against the same run's stock pipeline, the targets, the markdown
report and the files (e2e-<gpu>[-cases][-quick].json, .md)."""

from __future__ import annotations

from pathlib import Path

from ..results import fmt, gpu_tag, write_json_and_markdown
from .options import DEFAULT_CASES, TARGETS, TIMING_DEFINITION


def speedup(stock_s: float | None, variant_s: float | None) -> float | None:
    """Stock seconds / variant seconds, or None where either is missing."""
    return stock_s / variant_s if stock_s and variant_s else None


def finish_case(rows: list[dict], decode_s: float | None) -> list[dict]:
    """Fill total_s (denoise + decode) and the speed-ups vs the case's stock row (Bottleneck Sampling, Tian et al.
    2025)."""
    stock = next((r for r in rows if r["variant"] == "stock"), None)
    for row in rows:
        row["decode_s"] = decode_s
        row["total_s"] = row["denoise_s"] + decode_s if row["denoise_s"] is not None and decode_s else None
        base = stock or {}
        row["speedup_denoise"] = speedup(base.get("denoise_s"), row["denoise_s"])
        row["speedup_total"] = speedup(base.get("total_s"), row["total_s"])
    return rows


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The targets: whole generation (with decode) where decode was measured, else denoise only."""
    out = []
    for case, variant, minimum, over in TARGETS:
        row = next((r for r in rows if r["case"] == case and r["variant"] == variant), None)
        base = next((r for r in rows if r["case"] == case and r["variant"] == over), None)
        if row is None or base is None:
            continue
        with_decode = row["total_s"] is not None and base["total_s"] is not None
        basis = "with decode" if with_decode else "denoise only"
        value = speedup(base["total_s"], row["total_s"]) if with_decode else speedup(base["denoise_s"],
                                                                                      row["denoise_s"])
        out.append({"case": case, "variant": variant, "over": over, "target": minimum, "basis": basis,
                    "value": value, "met": None if value is None else value >= minimum})  # fmt: skip
    return out


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, one table per case (denoise and with decode, speed-ups), targets, errors."""
    lines = [
        f"# End-to-end benchmark, {results.get('gpu', '?')} (bf16, batch 1, random-weight real-size pipelines)",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, diffusers {results.get('diffusers')}, triton {results.get('triton')}, CUDA "
        f"{results.get('cuda')}, unbottle {results.get('unbottle')} ({results.get('git_commit') or 'no git'}); "
        f"{results.get('started', '')}",
        "",
        f"- time: {TIMING_DEFINITION}",
        f"- real-size: {results.get('real_size', '')}",
        f"- not real-size: {results.get('not_real_size', '')}",
        "",
    ]
    for name in results.get("cases", []):
        rows = [r for r in results.get("rows", []) if r["case"] == name]
        if not rows:
            continue
        r0 = rows[0]
        size = f"{r0['height']}×{r0['width']}"
        size = f"{r0['frames']} frames {size}" if r0["frames"] else size
        lines += [
            f"## {name}: {r0['model']}, {size}, guidance {r0['guidance_scale']:g}",
            "",
            "| variant | steps | transformer calls | denoise s | in transformer s | per call ms (input size) | "
            "speed-up | with decode s | speed-up | warm-up s | peak GiB | runs s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            steps = "+".join(map(str, r["steps"])) if r["steps"] else "—"
            runs = ", ".join(f"{t:.2f}" for t in r["times_s"]) or "—"
            note = f" (measured in {r['stock_from']})" if r.get("stock_from") else ""
            per_size = (r.get("per_size") or {}).items()
            sizes = ", ".join(f"{v['calls']} × {v['ms_per_call']:.1f} ({k})" for k, v in per_size)
            lines.append(
                f"| {r['variant']}{note} | {steps} | {r['transformer_calls'] if r['transformer_calls'] else '—'} | "
                f"{fmt(r['denoise_s'])} | {fmt(r.get('transformer_s'))} | {sizes or '—'} | "
                f"{fmt(r['speedup_denoise'], 2, '×')} | {fmt(r['total_s'])} | "
                f"{fmt(r['speedup_total'], 2, '×')} | {fmt(r['warmup_s'], 1)} | {fmt(r['peak_gib'], 1)} | {runs} |"
            )
        dec = results.get("decode", {}).get(name)
        if dec:
            lines += ["", f"decode: {fmt(dec['decode_s'])} s{' — ' + dec['error'] if dec['error'] else ''}"]
        lines.append("")
    if results.get("targets"):
        lines += ["## Targets", "", "| case | variant | over | basis | speed-up | target | met |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for t in results["targets"]:
            met = "—" if t["met"] is None else ("✓" if t["met"] else "✗")
            lines.append(f"| {t['case']} | {t['variant']} | {t.get('over', 'stock')} | {t['basis']} | "
                         f"{fmt(t['value'], 2, '×')} | ≥ {t['target']:g}× | {met} |")  # fmt: skip
        lines.append("")
    errors = [f"{r['case']} {r['variant']}: {r['error']}" for r in results.get("rows", []) if r.get("error")]
    errors += [f"{name} decode: {d['error']}" for name, d in results.get("decode", {}).items() if d.get("error")]
    if errors:
        lines += ["## Errors", "", *(f"- {e}" for e in errors), ""]
    if results.get("wall_s") is not None:
        lines.append(f"total benchmark wall time {results['wall_s']} s")
    return "\n".join(lines).rstrip() + "\n"


def output_stem(results: dict) -> str:
    """e2e-<gpu>, plus the cases when a subset ran and -quick, so split runs do not overwrite each other."""
    stem = f"e2e-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    cases = results.get("cases") or list(DEFAULT_CASES)
    if list(cases) != list(DEFAULT_CASES):
        stem += "-" + "_".join(cases)  # letters, digits, "-", "_" only: portable file names
    return stem + ("-quick" if results.get("options", {}).get("quick") else "")


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write e2e-<gpu>.json and .md; return {kind: path}."""
    return write_json_and_markdown(results, out_dir, output_stem(results), markdown_report(results))

"""The attention benchmark's results: TFLOP/s and speed-ups per row, the targets, the correctness check's verdict, the
markdown report, the plot of time against density, and the files (attention-<gpu>.json, .md, .png)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .. import measure
from ..results import fmt, gpu_tag, write_json_and_markdown
from .options import (
    BACKENDS,
    CHECK_TOLERANCE,
    FLOPS_DEFINITION,
    LABELS,
    MASK_DEFINITION,
    SPARSE_BACKENDS,
    TARGETS,
    TIMING_DEFINITION,
)


def finish_row(row: dict) -> dict:
    """Add TFLOP/s (row FLOPs / median ms) and speed-ups vs cuDNN dense and vs FlexAttention (baseline ms / ms)."""
    ms = row["ms"]
    work = {b: row["dense_flops"] if b.startswith("sdpa") else row["flops"] for b in BACKENDS}
    row["tflops"] = {b: (work[b] / (ms[b] * 1e-3) / 1e12 if ms.get(b) and work[b] else None) for b in BACKENDS}

    def ratios(base: str) -> dict[str, float | None]:
        """Baseline ms / backend ms for every other backend."""
        ref = ms.get(base)
        return {b: (ref / ms[b] if ref and ms.get(b) else None) for b in BACKENDS if b != base and b in ms}

    row["speedup_vs_cudnn"] = ratios("sdpa_cudnn")
    row["speedup_vs_flex"] = ratios("flex")
    return row


def evaluate_targets(rows: list[dict], first_call: dict | None) -> list[dict]:
    """The targets per measured shape; `met` is None where a time is missing, False where our check failed."""
    out = []
    for row in rows:
        for density, backend, base, minimum in TARGETS:
            if not math.isclose(row["density"], density) or backend not in row["ms"]:
                continue
            key = "speedup_vs_cudnn" if base == "sdpa_cudnn" else "speedup_vs_flex"
            value = row[key].get(backend)
            check_ok = row["check"]["ok"] if backend == "ours" else row.get("checks", {}).get(backend, {}).get("ok")
            met = None if value is None else (value >= minimum and check_ok is not False)
            out.append({
                "shape": row["shape"], "density": density, "what": f"{LABELS[backend]} vs {LABELS[base]}",
                "target": minimum, "value": value, "met": met, "check_ok": check_ok,
            })  # fmt: skip
    if first_call and first_call.get("ours_recompiled_on_second_length") is not None:
        recompiled = first_call["ours_recompiled_on_second_length"]
        out.append({"shape": None, "density": None, "what": "ours: no recompilation for a new sequence length",
                    "target": "no recompilation", "value": "recompiled" if recompiled else "no recompilation",
                    "met": not recompiled, "check_ok": None})  # fmt: skip
    return out


def failed_checks(results: dict) -> list[dict]:
    """Rows where our kernel's output disagreed with the reference (check ok is False)."""
    return [r for r in results.get("rows", []) if r["check"]["ok"] is False]


def fmt_error(value: float | str | None) -> str:
    """An error magnitude for the table (NaN arrives as a string from JSON round-trips)."""
    if value is None:
        return "—"
    return value if isinstance(value, str) else f"{value:.1e}"


def _density_cell(row: dict) -> str:
    """"0.1 (26/256)" for a uniform mask; "0.1 (≤ 61/256, calibrated, mean 0.102)" for counts that vary per row."""
    kept = f"{row['kept_blocks_per_row']}/{row['n_blocks']}"
    if row.get("budget") != "calibrated":
        return f"{row['density']:g} ({kept})"
    mean = "?" if row.get("actual_density") is None else f"{row['actual_density']:.3f}"
    return f"{row['density']:g} (≤ {kept}, calibrated, mean {mean})"


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, one table row per (shape, density), targets, first-call latency, errors."""
    tol = results.get("check_tolerance", CHECK_TOLERANCE)
    lines = [
        f"# Attention benchmark, {results.get('gpu', '?')} (bf16, batch 1, {results.get('block_size')}-token blocks)",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, triton {results.get('triton')}, CUDA {results.get('cuda')}, cuDNN "
        f"{results.get('cudnn')}; {results.get('started', '')}",
        "",
        f"- time: {TIMING_DEFINITION}",
        f"- TFLOP/s: {FLOPS_DEFINITION}",
        f"- masks: {results.get('mask', MASK_DEFINITION)}",
        f"- check: ours (and each `hopper` backend) vs FlexAttention output on each config (at density 1 also vs "
        f"dense SDPA); engine's choice: the backend unbottle's measured choice (backend_choice.py) picks for the "
        f"row's call, at its time in this table; ✗ when the "
        f"relative error > {tol} or the max abs error > {tol} · max(1, max |reference|); a ✗ time is not valid",
        "",
    ]
    failed = failed_checks(results)
    if failed:
        lines += [f"**ours FAILED the correctness check on {len(failed)} config(s): those times are not valid.**", ""]
    extra = [b for b in SPARSE_BACKENDS[2:] if any(b in r["ms"] for r in results.get("rows", []))]  # measured
    lines += [
        "| N × H × D | density (kept/row) | cuDNN ms | flash ms | Flex ms | ours ms | "
        + "".join(f"{LABELS[b]} ms | " for b in extra)
        + "cuDNN TFLOP/s | Flex TFLOP/s | ours TFLOP/s | ours vs cuDNN | ours vs Flex | Flex vs cuDNN | "
        + "".join(f"{LABELS[b]} vs cuDNN | " for b in extra)
        + "ours − Flex max abs err |",
        "|---|---|---|---|---|---|" + "---|" * (2 * len(extra)) + "---|---|---|---|---|---|---|",
    ]
    notes: dict[tuple[str, str, str], list[str]] = {}  # (shape, backend, error) -> densities
    for row in results.get("rows", []):
        ms = {b: (fmt(row["ms"].get(b)) if b not in row["error"] else "error") for b in BACKENDS}
        if row["check"]["ok"] is False:
            ms["ours"] += " ✗"
        for b, check in row.get("checks", {}).items():
            if check.get("ok") is False:
                ms[b] += " ✗"
        if row.get("choice_backend"):
            ms["choice"] = f"{ms['choice']} ({LABELS.get(row['choice_backend'], row['choice_backend'])})"
        errors = dict(row["error"])
        if row["check"].get("error"):
            errors["check"] = row["check"]["error"]
        for b, err in errors.items():
            notes.setdefault((row["shape"], LABELS.get(b, b), err), []).append(f"{row['density']:g}")
        tf, vc, vf = row["tflops"], row["speedup_vs_cudnn"], row["speedup_vs_flex"]
        lines.append(
            f"| {row['shape']} | {_density_cell(row)} | "
            f"{ms['sdpa_cudnn']} | {ms['sdpa_flash']} | {ms['flex']} | {ms['ours']} | "
            + "".join(f"{ms[b]} | " for b in extra)
            + f"{fmt(tf['sdpa_cudnn'], 0)} | {fmt(tf['flex'], 0)} | {fmt(tf['ours'], 0)} | "
            f"{fmt(vc.get('ours'), 2, '×')} | {fmt(vf.get('ours'), 2, '×')} | {fmt(vc.get('flex'), 2, '×')} | "
            + "".join(f"{fmt(vc.get(b), 2, '×')} | " for b in extra)
            + f"{fmt_error(row['check']['max_abs_err'])} |"
        )
    targets = results.get("targets") or []
    if targets:
        lines += ["", "## Targets", "", "| shape | density | what | target | reached | met |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for t in targets:
            value = t["value"]
            reached = fmt(value, 2, "×") if isinstance(value, float) else ("—" if value is None else str(value))
            target = f"≥ {t['target']}×" if isinstance(t["target"], float) else t["target"]
            met = {True: "yes", False: "no", None: "—"}[t["met"]]
            density = "—" if t["density"] is None else f"{t['density']:g}"
            lines.append(f"| {t['shape'] or '—'} | {density} | {t['what']} | {target} | {reached} | {met} |")
    first = results.get("first_call")
    if first and first.get("error"):
        lines += ["", "## First call on fresh sequence lengths", "", f"not measured: {first['error']}"]
    elif first:
        lines += [
            "", f"## First call on fresh sequence lengths ({first['heads']} heads × {first['head_dim']}, density "
            f"{first['density']:g}; compile caches {'fresh' if first.get('fresh_caches') else 'warm'})", "",
            "| backend | N | first call ms | warm call ms | error |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for backend in ("ours", "flex"):
            for e in first.get(backend, []):
                lines.append(f"| {LABELS[backend]} | {e['n']} | {fmt(e['first_call_ms'], 1)} | "
                             f"{fmt(e['warm_call_ms'], 3)} | {e['error'] or ''} |")  # fmt: skip
        lines += ["", f"ours compiled again for the second length: {first.get('ours_recompiled_on_second_length')} "
                  f"(compiled kernel variants after each length: {first.get('ours_kernel_variants')}); FlexAttention "
                  f"compiled again: {first.get('flex_recompiled_on_second_length')} (dynamo graphs after each "
                  f"length: {first.get('flex_graphs')}). {first.get('note', '')}"]  # fmt: skip
    if notes:
        lines += ["", "## Errors", ""]
        for (shape, backend, err), densities in notes.items():
            lines.append(f"- {shape}, {backend} (density {', '.join(densities)}): {err}")
    return "\n".join(lines) + "\n"


def write_plot(results: dict, path: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """Median time against density per shape (log–log), one panel per shape; None (with a note) without matplotlib."""
    log = log or measure.log
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib is not importable here, so no plot was written (the JSON and markdown hold the data)")
        return None
    shapes = list(dict.fromkeys(r["shape"] for r in results.get("rows", [])))
    if not shapes:
        return None
    cols = min(2, len(shapes))
    nrows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.2 * nrows), squeeze=False)
    styles = {"sdpa_cudnn": "--", "sdpa_flash": ":", "flex": "-o", "ours": "-s", "cudnn_bsa": "-^", "fa4": "-v",
              "choice": "k."}  # fmt: skip
    for ax, shape in zip(axes.flat, shapes, strict=False):
        rows = sorted((r for r in results["rows"] if r["shape"] == shape), key=lambda r: r["density"])
        for backend in BACKENDS:
            pts = [(r["density"], r["ms"][backend]) for r in rows if r["ms"].get(backend)]
            if pts:
                ax.plot(*zip(*pts, strict=True), styles[backend], label=LABELS[backend])
        bad = [(r["density"], r["ms"]["ours"]) for r in rows if r["check"]["ok"] is False and r["ms"].get("ours")]
        if bad:
            ax.plot(*zip(*bad, strict=True), "rx", markersize=12, label="ours: check failed")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("block density")
        ax.set_ylabel("median ms")
        ax.set_title(f"N×H×D = {shape}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(shapes) :]:
        ax.axis("off")
    fig.suptitle(f"Attention, {results.get('gpu', '?')}, bf16, {results.get('block_size')}-token blocks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results: dict, out_dir: Path, plot: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Write attention-<gpu>.json and .md (and the .png plot when `plot`); return {kind: path}."""
    out_dir = Path(out_dir)
    stem = f"attention-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    paths = write_json_and_markdown(results, out_dir, stem, markdown_report(results))
    if plot:
        png = write_plot(results, out_dir / f"{stem}.png", log=log)
        if png is not None:
            paths["png"] = png
    return paths

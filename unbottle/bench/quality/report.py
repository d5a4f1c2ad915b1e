"""The quality benchmark's results: one markdown row per setting (accuracy, per-category and per-fact accuracy, PSNR
vs stock, time) and the files quality-shapes.json and quality-shapes.md; with `--video`, one row per sparse setting
on clips (per-fact accuracy with motion, PSNR over all frames, realized density) in quality-shapes-video.json / .md."""

from __future__ import annotations

from pathlib import Path

from ...shapes.evaluate import FACT_TYPES
from ..results import write_json_and_markdown


def _table_start(title: str, head: list[str]) -> list[str]:
    """A report's first lines: its title, then the table's header and rule."""
    return [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def _accuracy_cells(row: dict) -> list[str]:
    """A row's first cells: setting, accuracy, fact accuracy."""
    return [row["setting"], f"{row['accuracy']:.3f}", f"{row['fact_accuracy']:.3f}"]


def markdown_report(results: dict) -> str:
    """One row per setting: accuracy, fact accuracy, per-category and per-fact accuracy, PSNR vs stock, time."""
    categories = sorted({c for row in results["rows"] for c in row["per_category"]})
    facts = [f for f in FACT_TYPES if any(f in row.get("per_fact", {}) for row in results["rows"])]
    opts = results["options"]
    fact_heads = [f"fact: {f}" for f in facts]
    passes = any("forward_passes" in row for row in results["rows"])
    head = ["setting", "accuracy", "facts", *categories, *fact_heads, "PSNR vs stock (dB)", "seconds"]
    head += ["generator passes / image (fwd + bwd)"] if passes else []
    kinds = f" of kinds {', '.join(opts['kinds'])}" if opts.get("kinds") else ""
    noises = f" × {opts['noise_seeds']} noise seeds" if opts.get("noise_seeds", 1) > 1 else ""
    lines = _table_start(f"Shapes T2I quality: {opts['captions']} held-out captions{kinds} (seed {opts['seed']})"
                         f"{noises}, {opts['steps']} steps, {results['device']}.", head)  # fmt: skip
    for row in results["rows"]:
        cells = _accuracy_cells(row)
        cells += [f"{row['per_category'][c]:.3f}" if c in row["per_category"] else "–" for c in categories]
        cells += [f"{row['per_fact'][f]:.3f}" if f in row.get("per_fact", {}) else "–" for f in facts]
        cells += [f"{row['psnr_vs_stock']:.1f}", f"{row['seconds']:.1f}"]
        if passes:
            cells.append(f"{row['forward_passes']} + {row['backward_passes']}" if "forward_passes" in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_video_report(results: dict) -> str:
    """The video table: one row per sparse setting (and stock), with what each column means."""
    rows, opts = results["rows"], results["options"]
    facts = [f for f in FACT_TYPES if any(f in row["per_fact"] for row in rows)]
    head = ["setting", "accuracy", "facts", *(f"fact: {f}" for f in facts), "PSNR vs stock (dB)", "realized density",
            "seconds"]  # fmt: skip
    lines = _table_start(f"Shapes T2V quality of sparse attention: {opts['captions']} held-out motion captions (seed "
                         f"{opts['seed']}), {opts['frames']} frames, {opts['steps']} steps, {results['device']}.",
                         head)  # fmt: skip
    for row in rows:
        cells = _accuracy_cells(row)
        cells += [_cell(row["per_fact"].get(f), 3) for f in facts]
        cells += [f"{row['psnr_vs_stock']:.1f}", _cell(row["realized_density"], 3), f"{row['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Every row generates the same captions from the same noise; stock is dense attention. accuracy: clips with "
        "every fact of their caption right (motion included); facts: the fraction of all facts right; fact: X: the "
        "accuracy of one fact type (object: the named shape is there; color: in the named colour; texture, size: as "
        "named; motion: it moves the named way over the clip); PSNR vs stock: over every frame and pixel of the set "
        "(inf: identical); realized density: kept tiles / all tiles the sparse steps computed (the forced diagonal "
        "included; – where no step ran sparse); seconds: the whole generation of the set.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """quality-shapes.json and quality-shapes.md in `out_dir` (created), quality-shapes-video.* for clips; an
    infinite PSNR is written as Infinity."""
    out_dir.mkdir(parents=True, exist_ok=True)
    video = results.get("media") == "video"
    markdown = markdown_video_report(results) if video else markdown_report(results)
    name = "quality-shapes-video" if video else "quality-shapes"
    paths = write_json_and_markdown(results, out_dir, name, markdown, indent=1, strict=False)
    return paths["json"], paths["md"]

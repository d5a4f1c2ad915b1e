"""The quality benchmark's results: one markdown row per setting (accuracy, per-category and per-fact accuracy, PSNR
vs stock, time) and the files quality-shapes.json and quality-shapes.md."""

from __future__ import annotations

from pathlib import Path

from ...shapes.evaluate import FACT_TYPES
from ..results import write_json_and_markdown


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
    lines = [
        f"Shapes T2I quality: {opts['captions']} held-out captions{kinds} (seed {opts['seed']}){noises}, "
        f"{opts['steps']} steps, {results['device']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in results["rows"]:
        cells = [row["setting"], f"{row['accuracy']:.3f}", f"{row['fact_accuracy']:.3f}"]
        cells += [f"{row['per_category'][c]:.3f}" if c in row["per_category"] else "–" for c in categories]
        cells += [f"{row['per_fact'][f]:.3f}" if f in row.get("per_fact", {}) else "–" for f in facts]
        cells += [f"{row['psnr_vs_stock']:.1f}", f"{row['seconds']:.1f}"]
        if passes:
            cells.append(f"{row['forward_passes']} + {row['backward_passes']}" if "forward_passes" in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """quality-shapes.json and quality-shapes.md in `out_dir` (created); an infinite PSNR is written as Infinity."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(results)
    paths = write_json_and_markdown(results, out_dir, "quality-shapes", markdown, indent=1, strict=False)
    return paths["json"], paths["md"]

"""The scores every quality row shares: PSNR against the stock output and the fraction of caption facts right."""

from __future__ import annotations

import math

import numpy as np

from ...shapes.evaluate import Report, evaluate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between uint8 images or clips of one shape, over all their pixels (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def fact_accuracy(report: Report) -> float:
    """The fraction of all caption facts that hold (finer than the all-facts-right accuracy)."""
    total = sum(report.fact_counts.values())
    return sum(report.per_fact[f] * n for f, n in report.fact_counts.items()) / total if total else math.nan


def score_row(name: str, outputs: np.ndarray, captions: list[str], stock: np.ndarray, seconds: float) -> dict:
    """One row: the evaluator's accuracy (all facts, per category, per fact) on the images or clips `outputs`, PSNR
    against the stock outputs over the whole set (a mean of per-output PSNRs is inf if one matches), and the time."""
    report = evaluate(zip(outputs, captions, strict=True))
    return {
        "setting": name, "accuracy": report.accuracy, "fact_accuracy": fact_accuracy(report),
        "per_category": report.per_category, "category_counts": report.category_counts,
        "per_fact": report.per_fact, "fact_counts": report.fact_counts,
        "psnr_vs_stock": psnr(outputs, stock), "seconds": round(seconds, 2),
    }  # fmt: skip

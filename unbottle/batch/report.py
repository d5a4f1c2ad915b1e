"""The reports of a finished batch: `scores.jsonl` (all candidates, ordered, with their `rank` within the prompt),
`ranking.json` (per prompt: the best candidate and the candidates' order) and `index.html` (a contact sheet per prompt,
candidates sorted by combined score, scores shown).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import BatchConfig
from .store import FORMAT, INDEX_FILE, RANKING_FILE, SCORES_FILE, load_records, write_text


def _sort_key(record: dict) -> tuple[float, int]:
    combined = record.get("combined")
    value = combined if isinstance(combined, (int, float)) and math.isfinite(combined) else -math.inf
    return -value, record["candidate"]


def rank_records(records: Mapping[tuple[int, int], dict], prompts: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(records ordered by prompt and candidate, each with its `rank` in its prompt (1 = best); per-prompt ranking)."""
    by_prompt: dict[int, list[dict]] = {}
    for (i, _), record in sorted(records.items()):
        by_prompt.setdefault(i, []).append(dict(record))
    ranking = []
    for i, prompt in enumerate(prompts):
        candidates = sorted(by_prompt.get(i, []), key=_sort_key)
        for place, record in enumerate(candidates, 1):
            record["rank"] = place
        best = candidates[0] if candidates else None
        ranking.append({
            "prompt_index": i, "prompt": prompt, "order": [r["candidate"] for r in candidates],
            "best": None if best is None else {k: best.get(k) for k in
                                               ("candidate", "seed", "combined", "scores", "units", "image")},
        })  # fmt: skip
    ordered = [r for i in sorted(by_prompt) for r in sorted(by_prompt[i], key=lambda r: r["candidate"])]
    return ordered, ranking


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin:1.4em 0 .4em}.row{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;padding:6px;background:#fff;border:2px solid #ddd;border-radius:6px;font-size:12px}
figure.best{border-color:#2a8}img{display:block;width:160px;height:auto;image-rendering:pixelated}
figcaption{margin-top:4px;line-height:1.35}.c{font-weight:600}.missing{color:#a33}"""


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def render_index(ranking: Sequence[dict], records: Sequence[dict], config: BatchConfig, title: str = "") -> str:
    """The contact sheet: per prompt, its candidates sorted by combined score, with every score shown."""
    by_key = {(r["prompt_index"], r["candidate"]): r for r in records}
    weights = ", ".join(f"{html.escape(name)} × {weight:g}" for name, weight in config.rewards)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title or 'unbottle batch')}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title or 'unbottle batch')}</h1>",
        f"<p>{len(ranking)} prompts × {config.n} candidates (seeds {config.seed} … {config.seed + config.n - 1}); "
        f"combined = Σ weight · unit(score): {weights}. Best first.</p>",
    ]
    for entry in ranking:
        i = entry["prompt_index"]
        parts.append(f"<h2>#{i} {html.escape(entry['prompt'])}</h2><div class='row'>")
        for place, j in enumerate(entry["order"]):
            r = by_key[i, j]
            scores = "<br>".join(
                f"{html.escape(name)} {_fmt(r['scores'].get(name))} (unit {_fmt(r.get('units', {}).get(name))})"
                for name, _ in config.rewards
            )
            parts.append(
                f"<figure class='{'best' if place == 0 else ''}'><a href='{html.escape(r['image'])}'>"
                f"<img src='{html.escape(r['image'])}' alt='candidate {j}' loading='lazy'></a><figcaption>"
                f"<span class='c'>#{place + 1} · {_fmt(r['combined'])}</span><br>candidate {j}, seed {r['seed']}"
                f"<br>{scores}</figcaption></figure>"
            )
        missing = config.n - len(entry["order"])
        if missing:
            parts.append(f"<p class='missing'>{missing} candidates missing</p>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_reports(out_dir: str | os.PathLike, prompts: Sequence[str], config: BatchConfig,
                  records: Mapping[tuple[int, int], dict] | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Write `scores.jsonl`, `ranking.json` and `index.html` from the shards; returns (records, ranking)."""
    out_dir = Path(out_dir)
    if records is None:
        records = load_records(out_dir, prompts, config)
    ordered, ranking = rank_records(records, prompts)
    write_text(out_dir / SCORES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    summary = {"format": FORMAT, "n": config.n, "seed": config.seed, "rewards": config.weights,
               "complete": len(ordered) == len(prompts) * config.n, "prompts": ranking}  # fmt: skip
    write_text(out_dir / RANKING_FILE, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    write_text(out_dir / INDEX_FILE, render_index(ranking, ordered, config, title=f"unbottle batch: {out_dir.name}"))
    return ordered, ranking


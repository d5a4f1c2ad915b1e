"""The product speaks of the product: no tracker references ("issue #4", "(#6)") in the package, the examples, the
benchmark scripts and results, or the README, and no web addresses in the package's or the examples' code. The
project's history, issue numbers included, lives in CHANGELOG.md (not scanned).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("unbottle", "examples", "bench", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".json", ".txt", ".toml", ".cfg", ".yaml", ".yml", ".sh", ".csv"}
ISSUE = re.compile(r"\bissues? ?#\d+|\bissues? \d+\b(?!\.\d)|\(#\d+[),]|\bPR ?#\d+", re.IGNORECASE)
URL = re.compile(r"\bhttps?://", re.IGNORECASE)


def _files(roots: tuple[str, ...], suffixes: set[str]) -> list[Path]:
    found = []
    for name in roots:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [p for p in candidates if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts]
    return found


def _hits(files: list[Path], pattern: re.Pattern) -> list[str]:
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = pattern.search(line)
            if match:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    return hits


def test_the_patterns_catch_what_they_are_meant_to():
    caught = ["the quality bench (issue #22)", "Issue 4 item 1", "issues #6, #8", "in (#12)", "(#4, #6)", "PR #3"]
    passed = ["host issue time per call", "CPU issue   182.2 ms", "#ff0000", "step #3 of 8", "issued 52.1 ms"]
    assert all(ISSUE.search(text) for text in caught)
    assert not any(ISSUE.search(text) for text in passed)


def test_no_issue_references_in_the_product():
    hits = _hits(_files(SCANNED, TEXT_SUFFIXES), ISSUE)
    assert not hits, f"{len(hits)} tracker reference(s); say what the product does instead:\n" + "\n".join(hits)


def test_no_web_addresses_in_code():
    hits = _hits(_files(("unbottle", "examples"), {".py"}), URL)
    assert not hits, f"{len(hits)} web address(es) in code or docstrings:\n" + "\n".join(hits)

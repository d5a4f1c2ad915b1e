"""The resumable record store of a batch run: canonical image paths, atomic writes, the per-process JSONL shards, and
what a resume keeps of them.

`scores.rank{r}.jsonl` holds one line per finished candidate of process r, appended, flushed and `os.fsync`ed after its
image is in place; one process writes one shard, so no two processes append to one file. Candidates with a line and
an image are kept; everything else (an image without its line, a temporary file, a torn last line) is redone, so
nothing is lost or duplicated. Nothing read back is trusted: a line counts only if it matches this run (prompt index
in range and its prompt's text, candidate in range, seed `seed + j`, the image path `images/p{i:05d}_c{j:02d}.png`
naming a regular, non-empty file inside `out_dir` that is not a link, the run's reward names, finite scores or None,
the combined score of its units); other lines are dropped and counted by reason. Records are rebuilt from the checked
fields, so only those reach the reports.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import BatchConfig, combined_score, is_int

FORMAT = 1  # version of the files a batch run writes
IMAGES = "images"
RUN_FILE, SCORES_FILE, RANKING_FILE, INDEX_FILE = "run.json", "scores.jsonl", "ranking.json", "index.html"
_SHARD = re.compile(r"scores\.rank(\d+)\.jsonl")
TEMPORARY = re.compile(r"\.tmp\d+$")  # `write_atomic`'s temporary files: NAME.tmp{pid}


def image_name(prompt_index: int, candidate: int) -> str:
    """The image path of a candidate, relative to the output folder."""
    return f"{IMAGES}/p{prompt_index:05d}_c{candidate:02d}.png"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write `path` through `write(file)` into a temporary file (`NAME.tmp{pid}`), fsynced, then `os.replace`d."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The JSONL shards in `out_dir` (`scores.rank{r}.jsonl`), ordered by process rank."""
    out_dir = Path(out_dir)
    found = [(int(m.group(1)), p) for p in out_dir.glob("scores.rank*.jsonl") if (m := _SHARD.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, lies inside `root` (False for a link loop)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _check_record(record: Any, root: Path, prompts: Sequence[str], config: BatchConfig,
                  require_image: bool) -> tuple[str, None] | tuple[None, dict]:  # fmt: skip
    """(why a shard record does not belong to this run, None) or (None, the record rebuilt from checked fields)."""
    if not isinstance(record, dict):
        return "not a record", None
    i, j = record.get("prompt_index"), record.get("candidate")
    if not (is_int(i) and 0 <= i < len(prompts)):
        return "prompt_index out of range", None
    if record.get("prompt") != prompts[i]:
        return "prompt text differs", None
    if not (is_int(j) and 0 <= j < config.n):
        return "candidate out of range", None
    seed = record.get("seed")
    if not (is_int(seed) and seed == config.seed_of(j)):
        return "seed is not seed + candidate", None
    name = image_name(i, j)
    if record.get("image") != name:
        return "image path not canonical", None
    if require_image:
        path = root / name
        try:
            info = path.lstat()
        except OSError:
            return "image missing", None
        if stat.S_ISLNK(info.st_mode) or not inside(path, root):
            return "image is a link or outside the folder", None
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return "image empty or not a file", None
    names = [name for name, _ in config.rewards]
    scores, units, combined = record.get("scores"), record.get("units"), record.get("combined")
    for value in (scores, units):
        if not (isinstance(value, dict) and sorted(value) == sorted(names)):
            return "reward names differ", None
    if not all(v is None or _number(v) for v in [*scores.values(), *units.values(), combined]):
        return "scores not finite numbers or None", None
    expected = combined_score(units, config)
    if (combined is None) != (expected is None) or (
        combined is not None and not math.isclose(combined, expected, rel_tol=1e-9, abs_tol=1e-12)
    ):
        return "combined is not the weighted units", None
    process = record.get("process")
    if not (is_int(process) and process >= 0):
        return "process not an integer ≥ 0", None
    return None, {
        "prompt_index": int(i), "prompt": prompts[i], "candidate": int(j), "seed": int(seed),
        "scores": {k: scores[k] for k in names}, "units": {k: units[k] for k in names}, "combined": combined,
        "image": name, "process": int(process),
    }  # fmt: skip


@dataclass
class _Scan:
    shards: list[tuple[Path, list[bytes]]]  # every regular shard and its lines
    chosen: dict[tuple[int, int], tuple[int, int, dict]]  # (prompt, candidate) → (shard, line, checked record)
    dropped: dict[str, int]  # why lines were dropped → how many
    links: list[Path]  # shards that are symbolic links (not read)


def _scan(out_dir: Path, prompts: Sequence[str], config: BatchConfig, require_images: bool) -> _Scan:
    """The shards' lines, and per (prompt, candidate) its last line that checks out; the others' reasons."""
    root = out_dir.resolve()
    scan = _Scan([], {}, {}, [])
    for path in shard_paths(out_dir):
        if path.is_symlink():
            scan.links.append(path)
            continue
        if not path.is_file():
            continue
        lines = path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        s = len(scan.shards)
        scan.shards.append((path, lines))
        for k, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                reason, checked = "torn or not JSON", None
            else:
                reason, checked = _check_record(record, root, prompts, config, require_images)
            if reason is not None:
                scan.dropped[reason] = scan.dropped.get(reason, 0) + 1
                continue
            scan.chosen[checked["prompt_index"], checked["candidate"]] = (s, k, checked)
    return scan


def load_records(out_dir: str | os.PathLike, prompts: Sequence[str], config: BatchConfig,
                 require_images: bool = True) -> dict[tuple[int, int], dict]:  # fmt: skip
    """Every finished candidate of this run in all shards, keyed by (prompt index, candidate).

    A record counts only if it matches the run: its prompt index, prompt text, candidate, seed, canonical image
    path and reward names, finite scores (or None) and the combined score of its units. With `require_images`, its
    image must also be a regular, non-empty file inside `out_dir` (not a link). Records are rebuilt from the checked
    fields only."""
    scan = _scan(Path(out_dir), prompts, config, require_images)
    return {key: record for key, (_, _, record) in scan.chosen.items()}


def compact_shards(out_dir: str | os.PathLike, prompts: Sequence[str], config: BatchConfig) -> dict[str, int]:
    """Rewrite the shards to one line per finished candidate; returns why lines were dropped → how many.

    Torn lines, records that do not match the run (see `load_records`), lines without an image and repeats go;
    shards that are symbolic links are removed. Call it only while holding the folder (`lock_output`)."""
    scan = _scan(Path(out_dir), prompts, config, require_images=True)
    keep = {(s, k) for s, k, _ in scan.chosen.values()}
    for s, (path, lines) in enumerate(scan.shards):
        data = b"".join(line + b"\n" for k, line in enumerate(lines) if (s, k) in keep)
        if data != path.read_bytes():
            write_atomic(path, lambda f, data=data: f.write(data))
    for path in scan.links:
        path.unlink(missing_ok=True)
        scan.dropped["shard is a link"] = scan.dropped.get("shard is a link", 0) + 1
    return scan.dropped



"""Reward-scored batch generation: N candidates per prompt, scored by rewards, ranked; resumable and multi-process.

    from unbottle.pipelines.reward_batch import BatchConfig, read_prompts, run_batch
    result = run_batch(pipe, read_prompts("prompts.txt"), "out", BatchConfig(n=4, rewards={"shapes-clip": 1.0}))
    result.ranking[0]["best"]          # the best candidate of the first prompt: seed, scores, image path

What it writes, as it goes (`out_dir`):
- `images/p{i:05d}_c{j:02d}.png`: candidate j of prompt i (written to a temporary file, then `os.replace`d). Video
  pipelines make 1-frame videos and the frame is the image, as `unbottle image` does.
- `scores.rank{r}.jsonl`: one line per finished candidate of process r, appended, flushed and `os.fsync`ed after its
  image is in place: prompt index and text, candidate, seed, each reward's raw and unit score, the combined score,
  the image path (relative to `out_dir`). One process writes one shard, so no two processes append to one file.
- `run.json`: what identifies the run (the prompts' hash, n, rewards, seed, batch size, model, call arguments).
At the end, on the main process: `scores.jsonl` (all candidates, ordered, with their `rank` within the prompt),
`ranking.json` (per prompt: the best candidate and the candidates' order) and `index.html` (a contact sheet per
prompt, candidates sorted by combined score, scores shown).

Seeds: candidate j of every prompt uses `seed + j` (a CPU `torch.Generator`, like `unbottle image`). The pipeline
is always called with `batch_size` samples (a short last batch is padded with repeats whose results are dropped), so
a candidate's image depends on its prompt, its seed and `batch_size` only: not on which other candidates share its
batch, on resuming or on the number of processes. With `batch_size=1` it is exactly the image of
`unbottle image PROMPT --seed S` with the same model and settings; larger batches agree with it up to float rounding
(at most about 1/255 on a pixel).

Combined score: `sum(weight * reward.unit(raw))` over the rewards (`unit` maps a reward's raw scores to about
[0, 1]; a reward without `unit` counts its raw score). Rewards score the 8-bit image as written, without gradients.

Resuming: run again with the same arguments. Candidates with a JSONL line and an image are kept; everything else (an
image without its line, a temporary file, a torn last line) is redone, so nothing is lost or duplicated. Other
arguments than the recorded ones raise `ResumeMismatchError`. Nothing read back is trusted: a line counts only if
it matches this run (prompt index in range and its prompt's text, candidate in range, seed `seed + j`, the image
path `images/p{i:05d}_c{j:02d}.png` naming a regular, non-empty file inside `out_dir` that is not a link, the run's
reward names, finite scores or None, the combined score of its units); other lines are dropped, the run says how
many and why through `log`, and their candidates are made again. Records are rebuilt from the checked fields, so
only those reach the reports.

One run per folder: a run holds `out_dir` from before it reads the shards until its reports are written, with an
exclusive `flock` on `out_dir/.unbottle-batch.lock` (`lock_output`; the file holds the holder's pid and stays; the
kernel releases the lock when its process ends, however it ends, so a killed run never blocks the next). A second
run on the same folder waits for the first (saying "waiting for another unbottle batch run on DIR (pid N) to
finish" once), then resumes and finds its work done; with `wait=False` (CLI `--no-wait`) it raises
`OutputLockedError` naming the folder and the pid instead. Under `accelerate launch` only the main process locks;
the others follow it, polling through broadcasts (no collective waits long enough to time out).

Several processes (`accelerate launch`): pass the `accelerate.PartialState` (or let `run_batch` make one). The
unfinished candidates are split between the processes with `split_between_processes` (contiguous runs, so a
process's candidates mostly share prompts; on a resume only the unfinished work is shared out), each process appends
to its own shard, and the main process merges all shards after `wait_for_everyone()`. Resuming works with any
number of processes: every process reads all shards.
"""

from __future__ import annotations

import hashlib
import html
import inspect
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1  # version of the files this module writes
IMAGES = "images"
RUN_FILE, SCORES_FILE, RANKING_FILE, INDEX_FILE = "run.json", "scores.jsonl", "ranking.json", "index.html"
LOCK_FILE = ".unbottle-batch.lock"
_SHARD = re.compile(r"scores\.rank(\d+)\.jsonl")
_TMP = re.compile(r"\.tmp\d+$")  # `_write_atomic`'s temporary files: NAME.tmp{pid}
_RESERVED = ("prompt", "generator", "output_type", "latents", "num_images_per_prompt", "num_videos_per_prompt")
_MAX_SEED = 2**63 - 1


class BatchConfigError(ValueError):
    """A `BatchConfig` field out of range; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class ResumeMismatchError(ValueError):
    """The output folder holds a run with other arguments; `differences` lists (key, recorded, requested)."""

    def __init__(self, out_dir: Path, differences: list[tuple[str, Any, Any]]) -> None:
        self.out_dir, self.differences = out_dir, differences
        shown = "; ".join(f"{key}: {_short(old)} there, {_short(new)} here" for key, old, new in differences)
        super().__init__(
            f"{str(out_dir)!r} holds a run with other arguments ({shown}); resume with the same prompts and "
            "arguments, or write to a new output folder"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class BatchConfig:
    """What a reward-scored batch makes: `n` candidates per prompt, seeds `seed + j`, scored by weighted rewards.

    `rewards` maps reward names (as `unbottle.load_reward` takes them) to weights; it is stored as a tuple of
    (name, weight) pairs in the given order. `batch_size` is the number of samples per pipeline call."""

    n: int = 4
    rewards: Mapping[str, float] | tuple[tuple[str, float], ...] = (("shapes-clip", 1.0),)  # rewards.DEFAULT
    seed: int = 0
    batch_size: int = 4

    def __post_init__(self) -> None:
        for name in ("n", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise BatchConfigError(name, f"BatchConfig.{name} must be an integer ≥ 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not _is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED - (self.n - 1):
            raise BatchConfigError(
                "seed", f"BatchConfig.seed must be an integer in [0, 2**63 - n] = [0, {_MAX_SEED - self.n + 1}] "
                f"(candidate j uses seed + j), got {self.seed!r}"
            )  # fmt: skip
        object.__setattr__(self, "seed", int(self.seed))
        pairs = tuple(self.rewards.items()) if isinstance(self.rewards, Mapping) else tuple(self.rewards)
        if not pairs:
            raise BatchConfigError("rewards", "BatchConfig.rewards must name at least one reward, got none")
        clean = []
        for item in pairs:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0].strip()):
                raise BatchConfigError("rewards", f"BatchConfig.rewards: {item!r} is not a (name, weight) pair")
            name, weight = item
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise BatchConfigError(
                    "rewards", f"BatchConfig.rewards[{name!r}] must be a finite number (the weight), got {weight!r}"
                )
            clean.append((name, float(weight)))
        names = [name for name, _ in clean]
        if len(set(names)) != len(names):
            raise BatchConfigError("rewards", f"BatchConfig.rewards names a reward twice: {names}")
        object.__setattr__(self, "rewards", tuple(clean))

    @property
    def weights(self) -> dict[str, float]:
        """The rewards as a {name: weight} dict."""
        return dict(self.rewards)

    def seed_of(self, candidate: int) -> int:
        """The seed of candidate `candidate` (the same for every prompt)."""
        return self.seed + candidate


@dataclass(frozen=True)
class BatchResult:
    """A finished batch: every candidate's record (ordered by prompt, candidate) and the per-prompt ranking."""

    out_dir: Path
    records: list[dict]
    ranking: list[dict]
    generated: int  # candidates this process generated in this call
    resumed: int  # candidates that were already finished when the call began (all processes)


# ---- prompts and run identity -------------------------------------------------------------------------------------


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file: one per line, blank lines and lines starting with `#` skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no prompts file {str(path)!r}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the prompts file {str(path)!r} is not UTF-8 text: {e}") from e
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"the prompts file {str(path)!r} has no prompts (blank lines and # comments are skipped)")
    return prompts


def prompts_hash(prompts: Sequence[str]) -> str:
    """SHA-256 of the prompt list (what a prompts file holds once blank lines and comments are dropped)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=lambda o: f"<{type(o).__name__}>"))


def run_identity(prompts: Sequence[str], config: BatchConfig, call_kwargs: Mapping[str, Any] | None = None,
                 model: str | None = None, extra: Mapping[str, Any] | None = None) -> dict:  # fmt: skip
    """What `run.json` records and a resume must match: prompts' hash, n, rewards, seed, batch size, model, call."""
    return _jsonable({
        "format": FORMAT, "prompts_sha256": prompts_hash(prompts), "num_prompts": len(prompts), "n": config.n,
        "rewards": config.weights, "seed": config.seed,
        "batch_size": config.batch_size, "model": model, "call": dict(call_kwargs or {}), **dict(extra or {}),
    })  # fmt: skip


def _differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((prefix + key, a, b))
    return found


def check_resume(out_dir: str | os.PathLike, identity: dict) -> bool:
    """Raise `ResumeMismatchError` if `out_dir/run.json` records other arguments; True when there is one to resume."""
    out_dir = Path(out_dir)
    path = out_dir / RUN_FILE
    if not path.exists():
        return False
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResumeMismatchError(out_dir, [("run.json", f"unreadable ({e})", "a run")]) from e
    recorded = recorded if isinstance(recorded, dict) else {}
    recorded = {k: v for k, v in recorded.items() if k not in ("prompts_file",)}  # informational only
    differences = _differences(recorded, identity)
    if differences:
        raise ResumeMismatchError(out_dir, differences)
    return True


# ---- files --------------------------------------------------------------------------------------------------------


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


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The JSONL shards in `out_dir` (`scores.rank{r}.jsonl`), ordered by process rank."""
    out_dir = Path(out_dir)
    found = [(int(m.group(1)), p) for p in out_dir.glob("scores.rank*.jsonl") if (m := _SHARD.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _combine(units: Mapping[str, float | None], config: BatchConfig) -> float | None:
    """The combined score `sum(weight * unit)`; None where it is not finite (a unit that was not)."""
    total = sum(w * (math.nan if units[name] is None else units[name]) for name, w in config.rewards)
    return _finite(total)


def _inside(path: Path, root: Path) -> bool:
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
    if not (_is_int(i) and 0 <= i < len(prompts)):
        return "prompt_index out of range", None
    if record.get("prompt") != prompts[i]:
        return "prompt text differs", None
    if not (_is_int(j) and 0 <= j < config.n):
        return "candidate out of range", None
    seed = record.get("seed")
    if not (_is_int(seed) and seed == config.seed_of(j)):
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
        if stat.S_ISLNK(info.st_mode) or not _inside(path, root):
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
    expected = _combine(units, config)
    if (combined is None) != (expected is None) or (
        combined is not None and not math.isclose(combined, expected, rel_tol=1e-9, abs_tol=1e-12)
    ):
        return "combined is not the weighted units", None
    process = record.get("process")
    if not (_is_int(process) and process >= 0):
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
            _write_atomic(path, lambda f, data=data: f.write(data))
    for path in scan.links:
        path.unlink(missing_ok=True)
        scan.dropped["shard is a link"] = scan.dropped.get("shard is a link", 0) + 1
    return scan.dropped


# ---- one run per folder -------------------------------------------------------------------------------------------


class OutputLockedError(RuntimeError):
    """Another run holds the output folder and the caller would not wait; `out_dir` and `pid` (or None) name it."""

    def __init__(self, out_dir: Path, pid: int | None) -> None:
        self.out_dir, self.pid = out_dir, pid
        super().__init__(
            f"{str(out_dir)!r} is in use by another unbottle batch run ({_pid_text(pid)}); wait for it to finish, "
            "or write to another output folder"
        )


def _pid_text(pid: int | None) -> str:
    return f"pid {pid}" if pid is not None else "pid unknown"


_POLL_S = 0.2  # how often a waiting run tries the lock
_HELD: dict[tuple[str, int], list] = {}  # (folder, thread) → [lock file descriptor (None off the main process), depth]


def _open_lock(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    return os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _holder(fd: int) -> int | None:
    """The pid the lock's holder wrote into the lock file, if it reads as one."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def _acquire(out_dir: Path, state: Any, wait: bool, log: Callable[[str], None]) -> int | None:
    """The main process takes the lock (polling, so that the other processes can follow it through broadcasts)."""
    import fcntl

    several = state is not None and state.num_processes > 1
    main = state is None or state.is_main_process
    fd, said = None, False
    try:
        while True:
            status: tuple[str, int | None, str] = ("locked", None, "")
            if main:
                try:
                    if fd is None:
                        fd = _open_lock(out_dir)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                    except BlockingIOError:
                        pid = _holder(fd)
                        status = ("busy" if wait else "refused", pid, "")
                        if wait and not said:
                            log(f"waiting for another unbottle batch run on {out_dir} ({_pid_text(pid)}) to finish")
                            said = True
                except OSError as e:
                    status = ("error", None, f"cannot lock {str(out_dir / LOCK_FILE)!r}: {e.strerror or e}")
            if several:
                from accelerate.utils import broadcast_object_list

                status = tuple(broadcast_object_list([status])[0])
            kind, pid, message = status
            if kind == "locked":
                return fd
            if kind == "refused":
                raise OutputLockedError(out_dir, pid)
            if kind == "error":
                raise OSError(message)
            time.sleep(_POLL_S)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise


@contextmanager
def lock_output(out_dir: str | os.PathLike, state: Any = None, *, wait: bool = True,
                log: Callable[[str], None] | None = None) -> Iterator[None]:  # fmt: skip
    """Hold `out_dir` for one batch run: an exclusive `flock` on `out_dir/.unbottle-batch.lock`.

    Only the main process of `state` locks; the others follow it. If another run holds the folder, wait for it
    (saying so once through `log`) or, with `wait=False`, raise `OutputLockedError`. Re-entrant within a thread."""
    out_dir = Path(out_dir).expanduser()
    key = (os.path.realpath(out_dir), threading.get_ident())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = _acquire(out_dir, state, wait, log or (lambda _: None))
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays (removing it would race with a run opening it)


# ---- ranking and reports ------------------------------------------------------------------------------------------


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
    _write_text(out_dir / SCORES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    summary = {"format": FORMAT, "n": config.n, "seed": config.seed, "rewards": config.weights,
               "complete": len(ordered) == len(prompts) * config.n, "prompts": ranking}  # fmt: skip
    _write_text(out_dir / RANKING_FILE, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    _write_text(out_dir / INDEX_FILE, render_index(ranking, ordered, config, title=f"unbottle batch: {out_dir.name}"))
    return ordered, ranking


# ---- generation ---------------------------------------------------------------------------------------------------


def _signature(pipe: object) -> inspect.Signature:
    return inspect.signature(pipe.__call__)


def _pipe_device(pipe: object) -> torch.device:
    device = getattr(pipe, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.type == "cpu" or (a.index or 0) == (b.index or 0))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Scorer:
    """Scores uint8 images with the weighted rewards: per-reward raw and unit scores, and the combined score."""

    def __init__(self, config: BatchConfig, models: Mapping[str, Callable], device: torch.device) -> None:
        self.config, self.models, self.device = config, models, device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, prompts: list[str]) -> list[dict]:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
        raw, unit = {}, {}
        for name, _ in self.config.rewards:
            model = self.models[name]
            scores = torch.as_tensor(model(pixels, prompts)).detach().float().reshape(-1)
            if scores.numel() != len(prompts):
                raise ValueError(f"reward {name!r} returned {scores.numel()} scores for {len(prompts)} images")
            units = torch.as_tensor(model.unit(scores)).float().reshape(-1) if hasattr(model, "unit") else scores
            raw[name], unit[name] = scores.cpu().tolist(), units.cpu().tolist()
        rows = []
        for b in range(len(prompts)):
            units = {k: _finite(v[b]) for k, v in unit.items()}
            rows.append({"scores": {k: _finite(v[b]) for k, v in raw.items()}, "units": units,
                         "combined": _combine(units, self.config)})  # fmt: skip
        return rows


def _generate(pipe: object, prompts: list[str], seeds: list[int], call_kwargs: Mapping[str, Any],
              video: bool) -> np.ndarray:  # fmt: skip
    """(B, H, W, 3) uint8 images for the prompts with one CPU generator per seed."""
    kwargs = dict(call_kwargs)
    if video:
        kwargs["num_frames"] = 1
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompt=prompts, generator=generators, output_type="np", **kwargs)
    images = out.frames if hasattr(out, "frames") else out.images
    images = images.float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim == 5:  # (B, F, H, W, 3): the first frame
        images = images[:, 0]
    if images.ndim != 4 or images.shape[0] != len(prompts) or images.shape[-1] != 3:
        raise ValueError(f"{type(pipe).__name__} returned images of shape {images.shape}, expected (B, H, W, 3)")
    if images.dtype != np.uint8:
        images = (np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return images


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    _write_atomic(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def _check_call_kwargs(pipe: object, call_kwargs: Mapping[str, Any], video: bool) -> None:
    for key in call_kwargs:
        if key in _RESERVED:
            raise ValueError(f"call_kwargs[{key!r}]: run_batch sets {', '.join(_RESERVED[:3])} itself; leave it out")
    frames = call_kwargs.get("num_frames")
    if video and frames not in (None, 1):
        raise ValueError(f"call_kwargs['num_frames']={frames!r}: reward batches make images; video pipelines run "
                         "1-frame videos")  # fmt: skip
    params = _signature(pipe).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(call_kwargs) - set(params))
        if unknown:
            raise ValueError(f"call_kwargs: {type(pipe).__name__} takes no {', '.join(unknown)}")


def make_state(device: str | torch.device | None = None) -> Any:
    """accelerate's `PartialState` for `device` (cpu=True for the CPU: gloo across processes under a launcher)."""
    from accelerate import PartialState

    cpu = device is not None and torch.device(device).type == "cpu"
    if device is None:
        cpu = not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _check_world(state: Any) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and state.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes but the PartialState sees {state.num_processes}: every process would "
            "make every candidate; create it with PartialState(cpu=True) on the CPU (see make_state)"
        )


def run_batch(
    pipe: object,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    config: BatchConfig | None = None,
    *,
    rewards: Mapping[str, Callable] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    state: Any = None,
    model: str | None = None,
    extra_identity: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    wait: bool = True,
) -> BatchResult:
    """Generate `config.n` candidates per prompt, score, rank and write them to `out_dir`, resuming a previous run.

    `rewards` maps the names in `config.rewards` to loaded reward callables (`(images (B,3,H,W) in [0,1], prompts)
    -> (B,)`, optionally with `.unit`); names not given are loaded with `unbottle.load_reward` on the process's
    device. `call_kwargs` go to every pipeline call (steps, size, guidance, ...). `state` is accelerate's
    `PartialState` (default: `make_state` for the pipeline's device); with several processes each process runs on
    `state.device`. `model` and `extra_identity` are recorded in `run.json` and must match on resume. The run holds
    `out_dir` throughout (`lock_output`): if another run holds it, this one waits for it (`wait=False`: raises
    `OutputLockedError`). Every process returns the same merged result."""
    config = config or BatchConfig()
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts: give at least one prompt")
    call_kwargs = dict(call_kwargs or {})
    video = "num_frames" in _signature(pipe).parameters
    _check_call_kwargs(pipe, call_kwargs, video)
    state = state if state is not None else make_state(_pipe_device(pipe))
    _check_world(state)
    device = _pipe_device(pipe)
    if state.num_processes > 1 and not _same_device(device, torch.device(state.device)):
        pipe.to(state.device)
        device = torch.device(state.device)
    say = log if (log is not None and state.is_main_process) else (lambda _: None)
    out_dir = Path(out_dir).expanduser()
    model = model if model is not None else str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)
    identity = run_identity(prompts, config, call_kwargs, model, extra_identity)
    check_resume(out_dir, identity)  # every process, before any waits: a mismatch stops them all alike
    models = dict(rewards or {})
    for name, _ in config.rewards:
        if name not in models:
            import unbottle

            models[name] = unbottle.load_reward(name, device=device)
    scorer = _Scorer(config, models, device)
    with lock_output(out_dir, state, wait=wait, log=say):
        return _run_locked(pipe, prompts, out_dir, config, scorer, call_kwargs, video, state, identity, progress,
                           say)  # fmt: skip


def _run_locked(pipe: object, prompts: list[str], out_dir: Path, config: BatchConfig, scorer: _Scorer,
                call_kwargs: dict, video: bool, state: Any, identity: dict, progress: bool,
                say: Callable[[str], None]) -> BatchResult:  # fmt: skip
    """`run_batch` while this run holds the output folder."""
    check_resume(out_dir, identity)  # again: a run that held the folder meanwhile may have started it
    if not _inside(out_dir / IMAGES, out_dir.resolve()):
        raise ValueError(f"{str(out_dir / IMAGES)!r} links outside the output folder; remove the link")
    if state.is_main_process:
        (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
        if not (out_dir / RUN_FILE).exists():
            _write_text(out_dir / RUN_FILE, json.dumps(identity, indent=1, ensure_ascii=False) + "\n")
        for folder in (out_dir, out_dir / IMAGES):  # what a kill left half-written
            for tmp in folder.glob("*.tmp*"):
                if _TMP.search(tmp.name):
                    tmp.unlink(missing_ok=True)
        dropped = compact_shards(out_dir, prompts, config)  # before anyone appends: one line per finished candidate
        if dropped:
            count = sum(dropped.values())
            reasons = ", ".join(f"{reason}: {k}" for reason, k in sorted(dropped.items(), key=lambda x: -x[1]))
            say(f"dropped {count} record{'s' if count != 1 else ''} of {out_dir} that do not match this run "
                f"({reasons}); their candidates are made again")  # fmt: skip
    state.wait_for_everyone()
    done = load_records(out_dir, prompts, config)
    state.wait_for_everyone()  # all have read the shards before anyone appends
    pending = [(i, j) for i in range(len(prompts)) for j in range(config.n) if (i, j) not in done]
    total = len(prompts) * config.n
    if done:
        say(f"resuming {out_dir}: {len(done)} of {total} candidates done, {len(pending)} to go")
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
    generated = 0
    if mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="candidates", unit="img", disable=not (progress and state.is_main_process))
        shard = out_dir / f"scores.rank{state.process_index}.jsonl"
        with open(shard, "ab") as log_file:
            for start in range(0, len(mine), config.batch_size):
                jobs = mine[start : start + config.batch_size]
                padded = jobs + [jobs[-1]] * (config.batch_size - len(jobs))  # fixed batch shape: same numerics
                texts = [prompts[i] for i, _ in padded]
                images = _generate(pipe, texts, [config.seed_of(j) for _, j in padded], call_kwargs, video)
                rows = scorer(images, texts)
                for b, (i, j) in enumerate(jobs):
                    name = image_name(i, j)
                    _save_png(out_dir / name, images[b])
                    record = {"prompt_index": i, "prompt": prompts[i], "candidate": j, "seed": config.seed_of(j),
                              **rows[b], "image": name, "process": state.process_index}  # fmt: skip
                    log_file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                    log_file.flush()
                    os.fsync(log_file.fileno())
                    generated += 1
                    bar.update(1)
        bar.close()
    state.wait_for_everyone()
    records = load_records(out_dir, prompts, config)
    if state.is_main_process:
        ordered, ranking = write_reports(out_dir, prompts, config, records)
    else:
        ordered, ranking = rank_records(records, prompts)
    state.wait_for_everyone()  # the reports exist when any process returns
    if len(ordered) != total:
        raise RuntimeError(f"{out_dir}: only {len(ordered)} of {total} candidates were written; run again to resume")
    return BatchResult(out_dir=out_dir, records=ordered, ranking=ranking, generated=generated, resumed=len(done))


__all__ = [
    "BatchConfig",
    "BatchConfigError",
    "BatchResult",
    "OutputLockedError",
    "ResumeMismatchError",
    "check_resume",
    "compact_shards",
    "image_name",
    "load_records",
    "lock_output",
    "make_state",
    "prompts_hash",
    "rank_records",
    "read_prompts",
    "render_index",
    "run_batch",
    "run_identity",
    "shard_paths",
    "write_reports",
]

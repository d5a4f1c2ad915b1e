"""What identifies a batch run (`run.json`: the prompts' hash, n, rewards, seed, batch size, model, call
arguments), and the check a resume makes against it: other arguments than the recorded ones raise
`ResumeMismatchError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import BatchConfig
from .store import FORMAT, RUN_FILE


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


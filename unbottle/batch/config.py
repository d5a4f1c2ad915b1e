"""What a reward-scored batch makes: its config (candidates, seeds, weighted rewards), its prompts and its result.

Seeds: candidate j of every prompt uses `seed + j`. Combined score: `sum(weight * reward.unit(raw))` over the rewards
(`unit` maps a reward's raw scores to about [0, 1]; a reward without `unit` counts its raw score).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_SEED = 2**63 - 1


class BatchConfigError(ValueError):
    """A `BatchConfig` field out of range; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
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
            if not is_int(value) or value < 1:
                raise BatchConfigError(name, f"BatchConfig.{name} must be an integer ≥ 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED - (self.n - 1):
            raise BatchConfigError(
                "seed", f"BatchConfig.seed must be an integer in [0, 2**63 - n] = [0, {MAX_SEED - self.n + 1}] "
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


def finite(value: float) -> float | None:
    """`value`, or None where it is not finite."""
    return value if math.isfinite(value) else None


def combined_score(units: Mapping[str, float | None], config: BatchConfig) -> float | None:
    """The combined score `sum(weight * unit)`; None where it is not finite (a unit that was not)."""
    total = sum(w * (math.nan if units[name] is None else units[name]) for name, w in config.rewards)
    return finite(total)

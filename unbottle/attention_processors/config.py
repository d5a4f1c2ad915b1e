"""`SparseAttentionConfig`: the one configuration of the sparse attention engine (pattern × correction × schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

PATTERNS = ("cached", "dynamic", "window")
MAX_BLOCK_SIZE = 4096  # tokens per block: 32× FlexAttention's 128-token tile


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"SparseAttentionConfig.{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"SparseAttentionConfig.{name} must be finite, got {value!r}")
    return float(value)


def _integer(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SparseAttentionConfig.{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bounds = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"SparseAttentionConfig.{name} must be {bounds}, got {value}")
    return value


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Block-sparse self-attention: which blocks (pattern), how the rest is corrected (reshape), and when (schedule).

    Re-ttention (Chen et al., 2025) supplies the statistical reshape; SparseD (Wang et al., 2025) the per-head patterns
    fixed once from exact attention ("cached").
    """

    density: float = 0.05  # fraction of (query block, key block) pairs computed on sparse steps, in (0, 1]
    coverage: float | None = None  # "cached": per row, the fewest key blocks holding this softmax mass, in (0, 1]
    block_size: int = 128  # tokens per block (128 = FlexAttention's tile; tiny test models use 4–16)
    pattern: str = "cached"  # "cached" (SparseD), "dynamic" (top-k of pooled q·k each step), "window" (locality)
    reshape: bool = True  # Re-ttention: out = ρ·O_sparse + R, with ρ and R cached at full/refresh steps
    full_steps: float | int = 0.2  # early dense steps: a fraction of the steps (float in [0, 1]) or a count (int)
    refresh_every: int = 5  # a dense refresh of the statistics after every k sparse steps; 0 = never
    rho_growth: float = 0.04  # Re-ttention's per-sparse-step growth of ρ after a refresh (its code's 0.04)

    def __post_init__(self) -> None:
        density = _number("density", self.density)
        if not 0.0 < density <= 1.0:
            raise ValueError(f"SparseAttentionConfig.density must be in (0, 1], got {self.density}")
        _integer("block_size", self.block_size, 1, MAX_BLOCK_SIZE)
        if not isinstance(self.pattern, str) or self.pattern not in PATTERNS:
            raise ValueError(f"SparseAttentionConfig.pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.coverage is not None:
            if isinstance(self.coverage, bool) or not isinstance(self.coverage, (int, float)):
                raise ValueError(
                    "SparseAttentionConfig.coverage must be None or a number in (0, 1], got "
                    f"{self.coverage!r} ({type(self.coverage).__name__})"
                )
            if not (math.isfinite(self.coverage) and 0.0 < self.coverage <= 1.0):
                raise ValueError(
                    f"SparseAttentionConfig.coverage must be a finite number in (0, 1], got {self.coverage}"
                )
            if self.pattern != "cached":
                raise ValueError(
                    f"SparseAttentionConfig.coverage needs pattern='cached' (only \"cached\" computes exact softmax "
                    f"mass), got pattern={self.pattern!r}"
                )
        if not isinstance(self.reshape, bool):
            raise ValueError(f"SparseAttentionConfig.reshape must be True or False, got {self.reshape!r}")
        if isinstance(self.full_steps, bool) or not isinstance(self.full_steps, (int, float)):
            raise ValueError(
                "SparseAttentionConfig.full_steps must be a fraction of the steps (float in [0, 1]) or a count "
                f"(int ≥ 0), got {self.full_steps!r} ({type(self.full_steps).__name__})"
            )
        if isinstance(self.full_steps, float):
            if not (math.isfinite(self.full_steps) and 0.0 <= self.full_steps <= 1.0):
                raise ValueError(
                    f"SparseAttentionConfig.full_steps as a fraction must be in [0, 1], got {self.full_steps}"
                )
        else:
            _integer("full_steps", self.full_steps, 0)
        _integer("refresh_every", self.refresh_every, 0)
        if _number("rho_growth", self.rho_growth) < 0:
            raise ValueError(f"SparseAttentionConfig.rho_growth must be ≥ 0, got {self.rho_growth}")

    def num_full_steps(self, num_steps: int | None) -> int | None:
        """Dense steps at the start of a generation of `num_steps` steps (None if a fraction and steps unknown)."""
        if isinstance(self.full_steps, int):
            return self.full_steps
        if num_steps is None:
            return None
        return int(math.ceil(self.full_steps * num_steps - 1e-9))

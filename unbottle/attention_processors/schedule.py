"""When to compute what: dense steps, refresh steps (dense + statistics), sparse steps (Re-ttention's schedule)."""

from __future__ import annotations

from enum import Enum


class StepKind(Enum):
    """What a self-attention layer does at one denoising step."""

    DENSE = "dense"  # exact attention, nothing cached
    REFRESH = "refresh"  # exact attention, and the reshape statistics (ρ, R) are captured
    SPARSE = "sparse"  # block-sparse attention (+ reshape)


def step_kind(step: int, full_steps: int, refresh_every: int, needs_statistics: bool) -> StepKind:
    """The kind of step `step` (0-based): `full_steps` dense steps, the last of them a refresh when statistics are
    needed (a first refresh is forced when `full_steps` is 0), then sparse steps with a refresh after every
    `refresh_every` of them."""
    first_sparse = max(full_steps, 1) if needs_statistics else full_steps
    if step < first_sparse:
        return StepKind.REFRESH if needs_statistics and step == first_sparse - 1 else StepKind.DENSE
    j = step - first_sparse
    if needs_statistics and refresh_every > 0 and (j + 1) % (refresh_every + 1) == 0:
        return StepKind.REFRESH
    return StepKind.SPARSE

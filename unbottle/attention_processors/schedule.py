"""When to compute what: dense steps, refresh steps (dense + statistics), sparse steps (Re-ttention's schedule).

`step_kind` is the schedule over a known number of full steps; `StepRule.kind` is the one place that decides how
many steps are full when a front knows only part of it: `full_steps` given as a fraction resolves against the
generation's step count, or the denoiser clock's timestep threshold, or else an assumed count (with one warning).
Where a step's index comes from is the front's business: the diffusers denoiser clock (state.py), a layer's own calls
when no clock runs (processor.py), the transformers generation clock or the model's forwards (dlm_state.py).
"""

from __future__ import annotations

import warnings
from enum import Enum

from .config import SparseAttentionConfig

ASSUMED_NUM_STEPS = 50  # a fractional `full_steps` when nothing tells the number of steps


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


class StepRule:
    """A config's schedule for one front: the kind of a step from what the front knows; warns once on a guess.

    `advice` ends the warning (how to tell the step count on this front). `first_step_dense`: step 0 of a fraction
    schedule runs dense before any count is known, and the guess (and its warning) waits for a later step.
    """

    def __init__(self, config: SparseAttentionConfig, advice: str, first_step_dense: bool = False) -> None:
        self.config, self.advice, self.first_step_dense = config, advice, first_step_dense
        self.warned = False

    def kind(
        self, step: int, num_steps: int | None = None, *, by_timestep: bool = False, full_until: int | None = None,
        assumed_steps: int | None = None, stacklevel: int = 1,
    ) -> StepKind:  # fmt: skip
        """The kind of step `step` (0-based) of `num_steps` (None: unknown).

        `by_timestep`: the denoiser clock places a fraction by timestep instead — every step is full until
        `full_until` (the first step below the threshold) is known. Unknown and not by timestep, the fraction resolves
        against `assumed_steps` (else `ASSUMED_NUM_STEPS`) and warns once, attributed `stacklevel` frames up from the
        caller (1: the caller itself).
        """
        cfg = self.config
        full = cfg.num_full_steps(num_steps)
        if full is None and by_timestep:
            if full_until is None:  # still above the timestep threshold of the full phase
                return StepKind.DENSE
            full = full_until + (1 if cfg.reshape else 0)
        if full is None:
            if self.first_step_dense and step == 0 and cfg.full_steps > 0:
                return StepKind.DENSE  # step 0 is dense under any positive fraction, whatever the total
            assumed = assumed_steps or ASSUMED_NUM_STEPS
            if not self.warned:
                warnings.warn(
                    f"unbottle sparse attention: full_steps={cfg.full_steps} is a fraction but the number of steps is "
                    f"unknown; assuming {assumed}. Give full_steps as a count, {self.advice}",
                    stacklevel=stacklevel + 1,
                )
                self.warned = True
            full = cfg.num_full_steps(assumed)
        return step_kind(step, full, cfg.refresh_every, needs_statistics=cfg.reshape)

"""Per-stage σ grids for Bottleneck Sampling (Tian et al., 2025) and the scheduler that runs one stage's grid.

Every flow-matching time shift diffusers uses scales the noise odds: with σ' the shifted σ,
`1/σ' − 1 = (1/σ − 1) / k`, i.e. `σ' = k·σ / (1 + (k − 1)·σ)` (SD3's static shift, Esser et al. 2024), with k = s
for a static shift s, k = e^μ for Flux's exponential dynamic shift and k = μ for the linear one. So a stage's grid
is one formula: start at the stage's strength w (the noise level it was re-noised to), space N points evenly in
unshifted time down to 0, and shift them by k; the terminal 0 is appended by the scheduler.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

# a scheduler that applies none of its own shifting or respacing to the σ values it is given
_IDENTITY = dict(
    shift=1.0, use_dynamic_shifting=False, shift_terminal=None, use_karras_sigmas=False, use_exponential_sigmas=False,
    use_beta_sigmas=False, invert_sigmas=False,
)  # fmt: skip


def time_shift(sigmas: np.ndarray | float, shift: float) -> np.ndarray:
    """σ' = k·σ / (1 + (k − 1)·σ): the flow-matching time shift (its inverse is the shift by 1/k)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def stage_sigmas(steps: int, strength: float, shift: float) -> list[float]:
    """A stage's `steps` σ values, from `strength` down, evenly spaced in unshifted time (terminal 0 not included)."""
    start = float(time_shift(strength, 1.0 / shift))  # the unshifted time whose shifted σ is the strength
    sigmas = time_shift(np.linspace(start, 0.0, steps + 1)[:-1], shift)  # (steps,)
    sigmas[0] = strength  # exactly the noise level the latents were re-noised to
    return sigmas.tolist()


def pipeline_shift(scheduler: object, tokens: int) -> float:
    """The shift factor k of a pipeline's own schedule for `tokens` latent tokens: static, or dynamic (Flux, LTX)."""
    config = scheduler.config
    if config.get("use_dynamic_shifting", False):
        mu = calculate_shift(
            tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )  # fmt: skip
        return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu
    if config.get("use_flow_sigmas", False) and "flow_shift" in config:  # UniPC / DPM-Solver in flow mode (Wan)
        return float(config["flow_shift"])
    return float(getattr(scheduler, "shift", None) or config.get("shift", 1.0))


class StageScheduler(FlowMatchEulerDiscreteScheduler):
    """Euler steps over one stage's explicit σ grid, whatever the pipeline passes to `set_timesteps`.

    Built from the pipeline's own scheduler config with every shift turned off, so the grid is used as given:
    pipelines that take `sigmas=` (Flux, SD3, HunyuanVideo), that take none (Wan) and that pass their own (LTX) all
    run the stage's grid. Timesteps are σ × num_train_timesteps, as in the stock scheduler.
    """

    stage_grid: tuple[float, ...] = ()

    @classmethod
    def for_grid(cls, base: object, sigmas: list[float]) -> StageScheduler:
        """A stage scheduler for `sigmas` (the stage's grid without the terminal 0), configured like `base`."""
        if isinstance(base, FlowMatchEulerDiscreteScheduler):
            scheduler = cls.from_config(base.config, **_IDENTITY)
        else:  # e.g. Wan's UniPC: the stage runs the paper's Euler steps on the same timestep scale
            scheduler = cls(num_train_timesteps=base.config.get("num_train_timesteps", 1000), **_IDENTITY)
        scheduler.stage_grid = tuple(sigmas)
        return scheduler

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
        sigmas: list[float] | None = None, mu: float | None = None, timesteps: list[float] | None = None,
    ) -> None:  # fmt: skip
        """The stage's grid, whatever is asked (the pipeline's step count, its own sigmas or μ are all the stage's)."""
        super().set_timesteps(sigmas=list(self.stage_grid), device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep: object = None) -> torch.Tensor:
        """The sample as it is (flow matching scales nothing; Bria calls this on any scheduler not exactly Euler's)."""
        return sample

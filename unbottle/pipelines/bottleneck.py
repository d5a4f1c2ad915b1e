"""`BottleneckSampler`, `Stage`: high → low → high resolution sampling (Bottleneck Sampling, Tian et al., 2025).

Each stage is one call of the stock pipeline: the prompt encoded once (`prompt_embeds=`), the stage's starting
latents in the pipeline's own format (`latents=`), its σ grid (a stage scheduler; nothing when `shift=None` and the
stage starts from pure noise, so the pipeline's own schedule runs untouched) and `output_type="latent"` for all but
the last stage. A stage's grid ends at σ = 0, so its last Euler step lands on x̂0 = x_σ − σ·v of the last velocity;
x̂0 is resized in latent space (space only for videos) and re-noised to the next stage's strength w with fresh
seeded noise, x = (1 − w)·x̂0 + w·ε. The last stage decodes with the caller's `output_type`: the pipeline's own VAE
path and output object.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..families import Family, family_for_pipeline
from ..families.latents import latent_frames
from ..families.prompt import encode_prompt_once, encoded_keywords, text_keywords
from .bottleneck_presets import PRESETS
from .bottleneck_schedule import StageScheduler, pipeline_shift, stage_sigmas
from .resample import RESAMPLE_MODES, resize_latents

# set per stage by the sampler; a caller's value would be silently overridden, so it is refused
STAGE_ARGUMENTS = ("num_inference_steps", "sigmas", "timesteps", "mu")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Stage.{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"Stage.{name} must be finite, got {value!r}")
    return float(value)


def _sequence_ranks(pipe: object) -> tuple[str, int] | None:
    """(denoiser class, ranks sharing its sequence) under diffusers' context parallelism; None without it."""
    from ..attention_processors.context_parallel import context_parallel_config

    for name in ("transformer", "transformer_2"):
        cp = context_parallel_config(getattr(pipe, name, None))
        if cp is not None and cp.ulysses_degree * cp.ring_degree > 1:
            return type(getattr(pipe, name)).__name__, cp.ulysses_degree * cp.ring_degree
    return None


@dataclass(frozen=True)
class Stage:
    """One stage of Bottleneck Sampling (Tian et al., 2025): its size, steps, restart noise level and time shift."""

    scale: float  # stage side / requested side, > 0; rounded to the pipeline's size granularity (VAE × patch)
    steps: int  # denoising steps of this stage (transformer calls per CFG branch), ≥ 1
    strength: float = 1.0  # the noise level σ the stage restarts from, in (0, 1]; the first stage's must be 1
    shift: float | None = None  # time shift of the stage's σ grid (paper, FLUX: 9, 6, 9); None: the pipeline's own

    def __post_init__(self) -> None:
        if _number("scale", self.scale) <= 0:
            raise ValueError(f"Stage.scale must be > 0, got {self.scale}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise ValueError(f"Stage.steps must be an integer ≥ 1, got {self.steps!r} ({type(self.steps).__name__})")
        if self.steps < 1:
            raise ValueError(f"Stage.steps must be ≥ 1, got {self.steps}")
        if not 0.0 < _number("strength", self.strength) <= 1.0:
            raise ValueError(f"Stage.strength must be in (0, 1], got {self.strength}")
        if self.shift is not None and _number("shift", self.shift) <= 0:
            raise ValueError(f"Stage.shift must be > 0 or None (the pipeline's own schedule), got {self.shift}")


@dataclass(frozen=True)
class StagePlan:
    """One stage for a concrete request: its pixel size and σ grid (None: the pipeline's own schedule)."""

    stage: Stage
    height: int
    width: int
    sigmas: tuple[float, ...] | None


class BottleneckSampler:
    """Bottleneck Sampling (Tian et al., 2025) on a stock flow-matching pipeline; returns the pipeline's own output."""

    def __init__(self, pipe: object, stages: Sequence[Stage], resample: str = "bicubic-aa") -> None:
        self.family: Family = family_for_pipeline(pipe, "bottleneck")
        stages = tuple(stages) if isinstance(stages, (list, tuple)) else stages
        if not isinstance(stages, tuple) or not stages:
            raise ValueError(f"stages must be a non-empty list of unbottle.Stage, got {stages!r}")
        for i, stage in enumerate(stages):
            if not isinstance(stage, Stage):
                raise TypeError(f"stages[{i}] must be an unbottle.Stage, got {type(stage).__name__}")
        if stages[0].strength != 1.0:
            raise ValueError(
                f"stages[0].strength must be 1.0 (the first stage starts from pure noise), got {stages[0].strength}"
            )
        if stages[-1].scale != 1.0:
            raise ValueError(
                f"stages[-1].scale must be 1.0 (the last stage runs at the requested size), got {stages[-1].scale}"
            )
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.pipe, self.stages, self.resample = pipe, stages, resample

    @classmethod
    def from_preset(cls, pipe: object, name: str, resample: str = "bicubic-aa") -> BottleneckSampler:
        """A sampler with a named stage list (see `bottleneck_presets.PRESETS`: flux-2x, flux-3x, wan-3x, …)."""
        if name not in PRESETS:
            raise ValueError(f"unknown bottleneck preset {name!r}; available: {', '.join(PRESETS)}")
        family, rows = PRESETS[name]
        sampler = cls(pipe, [Stage(*row) for row in rows], resample=resample)
        if sampler.family.name != family:
            warnings.warn(
                f"bottleneck preset {name!r} was chosen for {family} pipelines; this is a {type(pipe).__name__}",
                stacklevel=2,
            )
        return sampler

    def __repr__(self) -> str:
        return f"BottleneckSampler({type(self.pipe).__name__}, stages={list(self.stages)}, resample={self.resample!r})"

    # -- planning ---------------------------------------------------------------------------------------------------
    def _defaults(self) -> dict[str, object]:
        return {k: p.default for k, p in inspect.signature(type(self.pipe).__call__).parameters.items()}

    def plan(
        self, height: int | None = None, width: int | None = None, num_frames: int | None = None
    ) -> list[StagePlan]:
        """Each stage's pixel size and σ grid for a request; checks the sizes against the pipeline's granularity and
        each stage's tokens against the context-parallel ranks sharing them."""
        pipe, family, defaults = self.pipe, self.family, self._defaults()
        if height is None or width is None:  # the pipeline's own default size: its signature's, else its family's
            fallback = getattr(pipe, "default_sample_size", None)
            fallback_h = fallback_w = fallback * pipe.vae_scale_factor if fallback else None
            if family.latents.default_size is not None:
                fallback_h, fallback_w = family.latents.default_size(pipe)
            height = height or defaults.get("height") or fallback_h
            width = width or defaults.get("width") or fallback_w
        multiple = family.latents.multiple(pipe)
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
                raise ValueError(
                    f"{name} must be a positive multiple of {multiple} for {type(pipe).__name__} bottleneck sampling "
                    f"(VAE factor × patch size), got {value!r}"
                )
        frames = num_frames if num_frames is not None else defaults.get("num_frames")
        ranks = _sequence_ranks(pipe)
        plans = []
        for i, stage in enumerate(self.stages):
            h, w = (max(0, math.floor(side * stage.scale / multiple + 0.5)) * multiple for side in (height, width))
            if h == 0 or w == 0:
                raise ValueError(
                    f"stages[{i}].scale={stage.scale} makes a {h}×{w} px stage of a {height}×{width} request; each "
                    f"side must be ≥ {multiple} px, i.e. scale ≥ {multiple / (2 * min(height, width)):.4g}"
                )
            if ranks is not None and (tokens := self._tokens(h, w, frames)) % ranks[1]:
                raise ValueError(
                    f"stages[{i}].scale={stage.scale} makes a {h}×{w} px stage of {tokens} tokens, which the "
                    f"{ranks[1]} context-parallel ranks of {ranks[0]} do not divide (each rank takes an equal share "
                    f"of the sequence); allowed: a scale or size whose stage has a multiple of {ranks[1]} tokens"
                )  # fmt: skip
            sigmas = None
            if stage.shift is not None or stage.strength < 1.0:  # else: the pipeline's own schedule, untouched
                shift = stage.shift
                if shift is None:  # the pipeline's own shift for this stage's token count
                    shift = pipeline_shift(pipe.scheduler, self._tokens(h, w, frames))
                sigmas = tuple(stage_sigmas(stage.steps, stage.strength, shift))
            plans.append(StagePlan(stage, h, w, sigmas))
        return plans

    def _tokens(self, height: int, width: int, frames: int | None) -> int:
        """The denoiser's tokens at a stage's pixel size (frames: the request's, videos only)."""
        latents = self.family.latents
        lh, lw = latents.latent_size(self.pipe, height, width)
        shape = (1, 1, latent_frames(self.pipe, frames), lh, lw) if latents.video else (1, 1, lh, lw)
        return latents.tokens(self.pipe, shape)

    @contextlib.contextmanager
    def _schedule(self, sigmas: tuple[float, ...] | None) -> Iterator[None]:
        """Run the pipeline on the stage's σ grid (a stage scheduler in place of its own), or on its own schedule."""
        if sigmas is None:
            yield
            return
        own = self.pipe.scheduler
        self.pipe.scheduler = StageScheduler.for_grid(own, list(sigmas))
        try:
            yield
        finally:
            self.pipe.scheduler = own

    @contextlib.contextmanager
    def _attributes(self, plan: StagePlan) -> Iterator[None]:
        """Run the pipeline under the attributes its family sets for a call at the stage's size, restored after."""
        attributes = self.family.latents.stage_attributes
        if attributes is None:
            yield
            return
        values = attributes(self.pipe, plan.height, plan.width)
        own = {name: getattr(self.pipe, name) for name in values}
        for name, value in values.items():
            setattr(self.pipe, name, value)
        try:
            yield
        finally:
            for name, value in own.items():
                setattr(self.pipe, name, value)

    # -- generation -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 **kwargs: object) -> object:  # fmt: skip
        """Generate like `pipe(prompt, height=..., width=..., **kwargs)`, stage by stage; returns pipe's output."""
        refused = [name for name in STAGE_ARGUMENTS if name in kwargs]
        if refused:
            raise TypeError(f"{', '.join(refused)}: set per stage by BottleneckSampler (Stage.steps, Stage.shift)")
        pipe, family = self.pipe, self.family
        frames = kwargs.get("num_frames") if family.latents.video else None
        plans = self.plan(height, width, frames)
        frames = frames if frames is not None else self._defaults().get("num_frames")
        if prompt is not None:
            kwargs["prompt"] = prompt
        # negatives only where the call runs CFG (guidance_scale > 1) or true CFG (true_cfg_scale > 1), as the pipeline
        embeddings = encode_prompt_once(pipe, family.prompt, kwargs, always_negative=False)
        consumed = encoded_keywords(pipe)
        common = {k: v for k, v in kwargs.items() if k not in consumed and k != "latents"}
        # texts None, not left out: a default text (Ovis-Image's negative "") would clash with the encoded negative
        common = {**dict.fromkeys(text_keywords(pipe) & consumed), **common}
        generator = kwargs.get("generator")
        latents = kwargs.get("latents")  # the caller's starting noise, if any, is the first stage's
        for i, plan in enumerate(plans):
            last = i == len(plans) - 1
            call = dict(common, **embeddings, height=plan.height, width=plan.width)
            call["num_inference_steps"] = plan.stage.steps
            if latents is not None:
                call["latents"] = latents
            if not last:
                call.update(output_type="latent", return_dict=False)
            with self._schedule(plan.sigmas), self._attributes(plan):
                out = pipe(**call)
            if last:
                return out
            x0 = family.latents.to_grid(pipe, out[0], plan.height, plan.width, frames)  # x̂0: (B, C, [F,] h, w)
            after = plans[i + 1]
            if family.latents.renoise_arg is None:
                latents = family.latents.from_grid(pipe, self._renoise(x0, after, generator))
            else:  # the pipeline noises what it is handed (all its latents, carried ones too) to the strength itself
                latents = family.latents.from_grid(pipe, self._resize(x0, after).to(x0.dtype))
                common[family.latents.renoise_arg] = after.stage.strength
                common.update({keyword: out[index] for index, keyword in family.latents.carried})
        raise AssertionError("unreachable: the last stage returns")

    def _resize(self, x0: torch.Tensor, plan: StagePlan) -> torch.Tensor:
        """x̂0 resized to the next stage's latent size, in float32: (B, C, [F,] h', w')."""
        size = self.family.latents.latent_size(self.pipe, plan.height, plan.width)
        return resize_latents(x0, size, self.resample).float()

    def _renoise(self, x0: torch.Tensor, plan: StagePlan, generator: object) -> torch.Tensor:
        """x̂0 resized to the next stage, then noised to its strength w: (1 − w)·x̂0 + w·ε, ε ~ N(0, I) seeded."""
        resized = self._resize(x0, plan)  # (B, C, [F,] h', w')
        noise = randn_tensor(resized.shape, generator=generator, device=resized.device, dtype=torch.float32)
        w = plan.stage.strength
        return ((1.0 - w) * resized + w * noise).to(x0.dtype)  # the pipeline's own latent dtype

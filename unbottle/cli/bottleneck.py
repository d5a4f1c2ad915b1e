"""`--bottleneck PRESET` / `--bottleneck-stages`: the BottleneckSampler that generates in the pipeline's place."""

from __future__ import annotations

import argparse

from ..errors import UsageError

STAGES_HELP = "SCALE:STEPS:STRENGTH:SHIFT,... (SHIFT 'none' = the pipeline's own), e.g. 1:6:1:9,0.5:20:0.8:6,1:8:0.6:9"


def parse_stages(text: str, option: str = "--bottleneck-stages") -> list:
    """Stages from 'scale:steps:strength:shift,...' (Bottleneck Sampling, Tian et al. 2025); errors name the option
    and the part."""
    from ..pipelines.bottleneck import Stage

    stages = []
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        fields = part.strip().split(":")
        if len(fields) != 4:
            raise UsageError(f"{option}: stage {i} {part!r} must be SCALE:STEPS:STRENGTH:SHIFT")
        scale, steps, strength, shift = fields
        try:
            stage = Stage(scale=float(scale), steps=int(steps), strength=float(strength),
                          shift=None if shift.lower() == "none" else float(shift))  # fmt: skip
        except ValueError as e:
            raise UsageError(f"{option}: stage {i} {part!r}: {e}") from e
        stages.append(stage)
    if not stages:
        raise UsageError(f"{option}: no stages given; " + STAGES_HELP)
    return stages


def format_stages(stages: list | tuple) -> str:
    """Stages as `parse_stages` reads them, 'scale:steps:strength:shift,...' (Bottleneck Sampling, Tian et al.)."""
    return ",".join(f"{s.scale:g}:{s.steps}:{s.strength:g}:{'none' if s.shift is None else f'{s.shift:g}'}"
                    for s in stages)  # fmt: skip


def check_bottleneck_args(args: argparse.Namespace) -> list | None:
    """Validate the bottleneck options before any model loads; the parsed custom stages, if given."""
    from ..pipelines.bottleneck_presets import PRESETS

    preset, stages = getattr(args, "bottleneck", None), getattr(args, "bottleneck_stages", None)
    if preset is None and stages is None:
        return None
    option = "--bottleneck" if preset is not None else "--bottleneck-stages"
    if preset is not None and stages is not None:
        raise UsageError("--bottleneck and --bottleneck-stages: give one of them")
    if args.steps is not None:
        raise UsageError(f"--steps: with {option} every stage sets its own steps; leave --steps out")
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"--bottleneck: unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    return parse_stages(stages) if stages is not None else None


def make_sampler(pipe: object, args: argparse.Namespace, stages: list | None) -> object | None:
    """The sampler asked for on the command line (checked by `check_bottleneck_args`), or None."""
    from ..pipelines.bottleneck import BottleneckSampler

    preset = getattr(args, "bottleneck", None)
    if preset is None and stages is None:
        return None
    option = "--bottleneck" if preset is not None else "--bottleneck-stages"
    try:
        if preset is not None:
            sampler = BottleneckSampler.from_preset(pipe, preset, resample=args.bottleneck_resample)
        else:
            sampler = BottleneckSampler(pipe, stages, resample=args.bottleneck_resample)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from e
    return CheckedSampler(sampler, option)


class CheckedSampler:
    """A BottleneckSampler in the pipeline's place whose stages are planned for the request first: a stage that size
    (or the context-parallel ranks) cannot run is a UsageError naming the option."""

    def __init__(self, sampler: object, option: str) -> None:
        self.sampler, self.option = sampler, option

    def __call__(self, *args: object, **kwargs: object) -> object:
        """Plan every stage for this request's size, then generate like `sampler(*args, **kwargs)`."""
        frames = kwargs.get("num_frames") if self.sampler.family.latents.video else None
        try:
            self.sampler.plan(kwargs.get("height"), kwargs.get("width"), frames)
        except ValueError as e:
            raise UsageError(f"{self.option}: {e}") from e
        return self.sampler(*args, **kwargs)

"""The family record: one diffusers model family as every feature sees it. Seams and data only, no math.

A `Family` names its model (denoiser) and pipeline classes and carries one part per feature it supports:
`attention` (sparse attention), `latents` + `prompt` (bottleneck sampling when `flow_matching`, noise search when
`latents.noise_grid` is set), `guidance` (structured guidance). A feature supports a family exactly when its parts
are there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .latents import call_default, patch_size, same, unpacked
from .layout import TokenLayout, call_timestep

FEATURES = ("sparse", "bottleneck", "noise", "guidance")


def _positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be an integer ≥ 1, got {value!r}")


def _callable(owner: str, name: str, value: object, optional: bool = False) -> None:
    if not (callable(value) or (optional and value is None)):
        raise ValueError(f"{owner}.{name} must be a function{' or None' if optional else ''}, got {value!r}")


def _names(owner: str, name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{owner}.{name} must be a tuple of non-empty class names, got {value!r}")


@dataclass(frozen=True)
class SelfAttention:
    """Sparse attention: which attention modules are self-attention, and the token layout of a denoiser forward."""

    modules: str  # regex over attention module names (as in `model.attn_processors`, without ".processor")
    layout: Callable[[torch.nn.Module, dict], TokenLayout]  # token layout of one forward, from its bound arguments
    timestep_arg: str = "timestep"  # the forward argument carrying the timestep (the step clock reads it)
    timestep_rising: bool = False  # that argument rises from 0 to 1 over denoising (1 − σ): the clock reads 1 − it
    read_timestep: Callable[[dict], float | None] | None = None  # the clock's timestep from the bound arguments, where
    # the argument's first element is not it (per-token timesteps whose first tokens are clean conditioning)

    def __post_init__(self) -> None:
        if not isinstance(self.modules, str) or not self.modules:
            raise ValueError(f"SelfAttention.modules must be a non-empty regex string, got {self.modules!r}")
        try:
            re.compile(self.modules)
        except re.error as e:
            raise ValueError(f"SelfAttention.modules {self.modules!r} is not a valid regex: {e}") from None
        _callable("SelfAttention", "layout", self.layout)
        if not isinstance(self.timestep_arg, str) or not self.timestep_arg.isidentifier():
            raise ValueError(
                f"SelfAttention.timestep_arg must name a forward argument (e.g. 'timestep'), got {self.timestep_arg!r}"
            )
        if not isinstance(self.timestep_rising, bool):
            raise ValueError(f"SelfAttention.timestep_rising must be True or False, got {self.timestep_rising!r}")
        _callable("SelfAttention", "read_timestep", self.read_timestep, optional=True)

    def selects(self, name: str) -> bool:
        """Whether the attention module `name` is self-attention that sparse attention replaces."""
        return re.search(self.modules, name) is not None

    def read_call(self, model: torch.nn.Module, bound: dict) -> tuple[float | None, TokenLayout | None]:
        """(timestep, layout) of one denoiser forward, from its bound arguments."""
        try:
            layout = self.layout(model, bound)
        except (KeyError, AttributeError, TypeError, ValueError, IndexError):
            layout = None  # an unusual call: patterns fall back to a 1-D sequence
        if self.read_timestep is not None:
            timestep = self.read_timestep(bound)
        else:
            timestep = call_timestep(bound, self.timestep_arg)
        if timestep is not None and self.timestep_rising:
            timestep = 1.0 - timestep  # the clock expects a timestep that falls over denoising
        return timestep, layout


@dataclass(frozen=True)
class Latents:
    """The pipeline's latents (`latents=`): packed tokens or a grid, size granularity, and how its noise is drawn."""

    video: bool
    vae_factor: Callable[[object], int]  # pixels per latent position
    packing: int = 1  # latent positions per side folded into one token by the pipeline itself (Flux: 2)
    size_multiple: int = 1  # what the pipeline's `check_inputs` demands of height/width (1: nothing beyond the VAE)
    to_grid: Callable[..., torch.Tensor] = unpacked  # (pipe, latents, height, width, frames) → (B, C, [F,] h, w)
    from_grid: Callable[[object, torch.Tensor], torch.Tensor] = same  # (B, C, [F,] h, w) → pipeline latents
    noise_grid: Callable[[object, int, int, int | None], tuple[int, ...]] | None = None  # one sample's noise shape as
    # the pipeline draws it, before packing: (pipe, height, width, frames) → (C, [F',] h, w); None: no noise search
    default_size: Callable[[object], tuple[int, int]] | None = None  # (height, width) when the call gives none
    float32_noise: bool = False  # noise drawn in float32 whatever the weights (Wan); else in the embeddings' dtype
    resolution_bins: Callable[[object], dict | None] | None = None  # aspect-ratio bins `use_resolution_binning`
    # maps the size to (PixArt), or None when the pipeline has none for its sample size
    renoise_arg: str | None = None  # the __call__ keyword by which the pipeline itself noises the latents it is given
    # to a strength w, (1 − w)·x + w·ε (LTX-2's noise_scale): a bottleneck stage then passes its latents clean
    carried: tuple[tuple[int, str], ...] = ()  # (output index, __call__ keyword): latent outputs of a stage handed as
    # they are to the next (LTX-2's audio latents, which keep their size), noised by `renoise_arg` with the video
    stage_attributes: Callable[[object, int, int], dict[str, object]] | None = None  # (pipe, height, width) → the
    # pipeline attributes under which a call renders at height × width, set around each bottleneck stage and restored
    # after (HiDream rescales every size to the area of its default_sample_size)

    def __post_init__(self) -> None:
        _callable("Latents", "vae_factor", self.vae_factor)
        _positive_int("Latents", "packing", self.packing)
        _positive_int("Latents", "size_multiple", self.size_multiple)
        for name in ("to_grid", "from_grid"):
            _callable("Latents", name, getattr(self, name))
        for name in ("noise_grid", "default_size", "resolution_bins", "stage_attributes"):
            _callable("Latents", name, getattr(self, name), optional=True)
        renoise = self.renoise_arg
        if renoise is not None and (not isinstance(renoise, str) or not renoise.isidentifier()):
            raise ValueError(f"Latents.renoise_arg must name a __call__ argument or be None, got {self.renoise_arg!r}")
        if not isinstance(self.carried, tuple) or not all(
            isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], int) and c[0] >= 1 and isinstance(c[1], str)
            and c[1].isidentifier() for c in self.carried
        ):  # fmt: skip
            raise ValueError(
                f"Latents.carried must be a tuple of (output index ≥ 1, __call__ keyword) pairs, got {self.carried!r}"
            )
        if self.carried and self.renoise_arg is None:
            raise ValueError("Latents.carried needs Latents.renoise_arg: the pipeline must noise what it is handed")

    def multiple(self, pipe: object) -> int:
        """Granularity of a height/width in pixels: VAE factor × patch size (× packing), as the pipeline needs."""
        _, ph, pw = patch_size(pipe)
        return math.lcm(self.vae_factor(pipe) * self.packing * math.lcm(ph, pw), self.size_multiple)

    def latent_size(self, pipe: object, height: int, width: int) -> tuple[int, int]:
        """(h, w) latent positions of a height × width pixel image."""
        return height // self.vae_factor(pipe), width // self.vae_factor(pipe)

    def tokens(self, pipe: object, grid_shape: tuple[int, ...]) -> int:
        """Transformer tokens of a latent grid (B, C, [F,] h, w): what dynamic shifting's μ is computed from."""
        pt, ph, pw = patch_size(pipe)
        *frames, h, w = grid_shape[2:]
        f = frames[0] // pt if frames else 1
        return f * (h // (ph * self.packing)) * (w // (pw * self.packing))

    def size(self, pipe: object, kwargs: dict) -> tuple[int, int]:
        """(height, width) the pipeline generates at for these call arguments, before any output resize."""
        default_h, default_w = self.default_size(pipe)
        height, width = kwargs.get("height") or default_h, kwargs.get("width") or default_w
        binning = kwargs.get("use_resolution_binning", call_default(pipe, "use_resolution_binning"))
        if self.resolution_bins is not None and binning:
            bins = self.resolution_bins(pipe)
            if bins is not None:  # else the pipeline raises its own error for the sample size
                height, width = pipe.image_processor.classify_height_width_bin(height, width, ratios=bins)
        return int(height), int(width)

    def noise_shape(self, pipe: object, kwargs: dict) -> tuple[int, ...]:
        """(1, C, [F',] h, w): one sample's noise shape as the pipeline draws it, before packing."""
        frames = (kwargs.get("num_frames") or call_default(pipe, "num_frames")) if self.video else None
        return (1, *self.noise_grid(pipe, *self.size(pipe, kwargs), frames))

    def noise_dtype(self, embeds: dict) -> torch.dtype:
        """The dtype the pipeline draws (and keeps) its latents in, given its encoded prompt."""
        return torch.float32 if self.float32_noise else embeds["prompt_embeds"].dtype


@dataclass(frozen=True)
class PromptEncoding:
    """What the pipeline's `encode_prompt` returns: the `__call__` keyword each tensor feeds (None: unused)."""

    encoded: tuple[str | None, ...]
    separate_negative: bool = False  # negatives come from a second `encode_prompt` call (true CFG: Flux, HunyuanVideo)

    def __post_init__(self) -> None:
        if not isinstance(self.encoded, tuple) or not self.encoded or not all(
            k is None or (isinstance(k, str) and k) for k in self.encoded
        ):
            raise ValueError(
                f"PromptEncoding.encoded must be a non-empty tuple of __call__ keywords or None, got {self.encoded!r}"
            )


@dataclass(frozen=True)
class CrossAttentionText:
    """Structured guidance: where the denoiser is, how the pipeline preprocesses and projects its text."""

    model_attr: str  # the pipeline attribute holding the denoiser ("unet", "transformer")
    projection: Callable[[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor] | None]  # model → per-token text
    # projection applied before cross-attention, or None
    text: Callable[[object, str, dict], str]  # (pipe, prompt, encode_prompt arguments) → the text it tokenizes
    max_length_arg: str | None = None  # encode_prompt argument giving the token budget (None: the tokenizer's own)
    phrase_arguments: tuple[tuple[str, object], ...] = ()  # extra encode_prompt arguments for a noun phrase
    second_prompt: str | None = None  # a second-encoder prompt argument: a different text there keeps the call stock
    exact: bool = False  # only the listed pipeline classes themselves, not subclasses

    def __post_init__(self) -> None:
        if not isinstance(self.model_attr, str) or not self.model_attr.isidentifier():
            raise ValueError(
                f"CrossAttentionText.model_attr must name the pipeline's denoiser attribute (e.g. 'unet', "
                f"'transformer'), got {self.model_attr!r}"
            )
        _callable("CrossAttentionText", "projection", self.projection)
        _callable("CrossAttentionText", "text", self.text)


@dataclass(frozen=True)
class Family:
    """One diffusers model family: its classes and, per feature, the seams that feature drives it through."""

    name: str
    model_classes: tuple[str, ...]  # denoiser classes (sparse attention looks models up by these)
    pipeline_classes: tuple[str, ...] = ()  # pipeline classes (bottleneck, noise search, structured guidance)
    attention: SelfAttention | None = None
    latents: Latents | None = None
    prompt: PromptEncoding | None = None
    guidance: CrossAttentionText | None = None
    flow_matching: bool = False  # a flow-matching scheduler: bottleneck sampling can drive it
    stock_steps: int | None = None  # the stock step count (bottleneck presets' speed-ups are measured against it)
    parallel_plan: object | None = None  # a context-parallel plan (diffusers' `_cp_plan` format) for models without
    # one of their own, or a function (of no arguments or of the model) returning it or None; see parallel.py
    parallel_refusal: str | None = None  # why no plan shards it correctly, where its attention would allow one

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Family.name must be a non-empty string, got {self.name!r}")
        _names("Family", "model_classes", self.model_classes)
        _names("Family", "pipeline_classes", self.pipeline_classes)
        if not self.model_classes and not self.pipeline_classes:
            raise ValueError(f"Family {self.name!r} names no class: give model_classes and/or pipeline_classes")
        for name, kind in (("attention", SelfAttention), ("latents", Latents), ("prompt", PromptEncoding),
                           ("guidance", CrossAttentionText)):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"Family.{name} must be an unbottle.families.{kind.__name__} or None, got {value!r}")
        if self.stock_steps is not None:
            _positive_int("Family", "stock_steps", self.stock_steps)
        if not (self.parallel_plan is None or isinstance(self.parallel_plan, dict) or callable(self.parallel_plan)):
            raise ValueError(
                "Family.parallel_plan must be a context-parallel plan (a dict in diffusers' _cp_plan format), a "
                f"function returning one, or None, got {self.parallel_plan!r}"
            )

        if self.parallel_refusal is not None and (not isinstance(self.parallel_refusal, str)
                                                  or not self.parallel_refusal.strip()):  # fmt: skip
            raise ValueError(
                f"Family.parallel_refusal must be a non-empty string or None, got {self.parallel_refusal!r}"
            )

    def supports(self, feature: str) -> bool:
        """Whether `feature` ("sparse", "bottleneck", "noise", "guidance") can drive this family: its parts exist."""
        if feature == "sparse":
            return self.attention is not None
        if feature == "bottleneck":
            return self.flow_matching and self.latents is not None and self.prompt is not None
        if feature == "noise":
            return (self.latents is not None and self.latents.noise_grid is not None
                    and self.latents.default_size is not None and self.prompt is not None)  # fmt: skip
        if feature == "guidance":
            return self.guidance is not None
        raise ValueError(f"unknown feature {feature!r}; expected one of {', '.join(FEATURES)}")

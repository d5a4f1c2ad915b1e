"""`enable_structured_guidance` / `disable_structured_guidance`: one call on a stock pipeline, exactly undone.

Feng et al. 2023, "Training-Free Structured Diffusion Guidance" (arXiv 2212.05032). Enabling
1. wraps the pipeline's `encode_prompt` (an instance attribute, deleted again on disable): the pipeline's own prompt
   encoding runs unchanged, then each prompt's noun phrases are encoded through the same method and spliced into
   copies of its embedding (`embeddings.prompt_structure`), and the stacks are kept for that call;
2. adds a forward pre-hook on the denoiser that finds the conditional rows of each call's `encoder_hidden_states`
   (rows equal to the kept prompt embeddings; the unconditional half never matches) and hands their stacks, mapped
   through the model's own per-token caption projection where it has one, to the processors;
3. installs a `StructuredCrossAttnProcessor` around each cross-attention module's processor (the originals are kept
   and the same objects restored on disable; a denoiser without diffusers' AttentionMixin, such as Allegro, Latte or
   Cosmos, is reached through each module's get/set_processor). Self-attention is untouched.
Supported: the families of the family registry with a `guidance` part: UNet Stable Diffusion 1.x/2.x and SDXL (both
text encoders: a phrase is encoded by the pipeline's own `encode_prompt`, which concatenates the two encoders' token
states, and spliced into both halves at once), PixArt-α/Σ, Wan text-to-video, Allegro, Latte and Cosmos-Predict2
text-to-image pipelines.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attention_processors.enable import attention_processors, set_attention_processors
from ..families import CrossAttentionText, family_for_pipeline
from .embeddings import prompt_structure
from .phrases import PARSERS
from .processor import MODES, StructuredCrossAttnProcessor, StructuredPlan, StructuredState

HANDLE_ATTR = "_unbottle_structured"


@dataclass(frozen=True)
class StructuredGuidanceOptions:
    """Options of structured guidance (Feng et al. 2023): the noun-phrase parser and the value-combination mode."""

    parser: str = "auto"
    mode: str = "average"

    def __post_init__(self) -> None:
        if self.parser not in PARSERS:
            raise ValueError(f"unknown parser {self.parser!r}; expected one of {', '.join(PARSERS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")


@dataclass
class _Stash:
    """The structured embeddings of the latest `encode_prompt` call, one entry per embedding row."""

    cond: torch.Tensor  # (N, L, C): the positive prompt embeddings encode_prompt returned
    rows: list[tuple[torch.Tensor, torch.Tensor]]  # per row: stack (1 + k, L, C), single-spliced (L, C)
    projected: dict[tuple[torch.dtype, torch.device], list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict
    )


@dataclass
class StructuredGuidanceHandle:
    """What `enable_structured_guidance` changed, to undo it exactly."""

    pipe: Any
    model: torch.nn.Module
    options: StructuredGuidanceOptions
    originals: dict[str, object]  # the model's processors before, by `attn_processors` key (same objects)
    state: StructuredState
    encode_prompt: Any  # the pipeline's own instance attribute `encode_prompt` before, or None
    hooks: list[Any] = field(default_factory=list)
    stash: _Stash | None = None

    def disable(self) -> None:
        """Undo `enable_structured_guidance` (Feng et al. 2023, Training-Free Structured Diffusion Guidance)."""
        disable_structured_guidance(self.pipe)


def _wrap_encode_prompt(pipe: Any, family: CrossAttentionText, handle: StructuredGuidanceHandle) -> Callable[..., Any]:
    original = pipe.encode_prompt  # the bound method (or the instance attribute a user set)
    signature = inspect.signature(original)
    counts = ("num_images_per_prompt", "num_videos_per_prompt")
    per_prompt = next((k for k in counts if k in signature.parameters), None)

    @functools.wraps(original)
    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        prompt = arguments.get("prompt")
        handle.stash = None
        if prompt is None or arguments.get("prompt_embeds") is not None:
            return out
        if family.second_prompt and arguments.get(family.second_prompt) not in (None, prompt):
            return out  # a second prompt for the second text encoder: its half of the embedding has other phrases
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cond = out[0]  # (N, L, C), N = len(prompts) × per-prompt count
        repeat = arguments.get(per_prompt, 1) if per_prompt else 1
        limit = arguments.get(family.max_length_arg) if family.max_length_arg else None
        max_length = _token_budget(pipe.tokenizer, limit, cond.shape[1])

        def encode(phrases: list[str]) -> torch.Tensor:  # (k, L', C) through the pipeline's own path
            overrides = {"prompt": phrases, "do_classifier_free_guidance": False, "prompt_embeds": None,
                         "negative_prompt_embeds": None}  # fmt: skip
            if per_prompt:
                overrides[per_prompt] = 1
            overrides |= dict(family.phrase_arguments)  # the family's own (PixArt: no second caption cleaning)
            return original(**(arguments | overrides))[0]

        rows = []
        for prompt_text in prompts:
            text = family.text(pipe, prompt_text, arguments)
            full = cond[len(rows)]  # (L, C): the first row of this prompt (its copies are equal)
            structure = prompt_structure(text, full, encode, pipe.tokenizer, max_length, handle.options.parser)
            rows += [structure] * repeat
        if len(rows) == cond.shape[0] and any(stack.shape[0] > 1 for stack, _ in rows):
            handle.stash = _Stash(cond, rows)
        return out

    return encode_prompt


def _token_budget(tokenizer: Any, limit: int | None, length: int) -> int:
    """Tokens of a prompt the pipeline keeps: its own limit (else the tokenizer's), at most the L rows it encodes to
    (Latte keeps at most 120 tokens, and for one prompt only as many rows as it has tokens)."""
    if limit is None:
        limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < length else length


def _plan(
    handle: StructuredGuidanceHandle, family: CrossAttentionText, encoder_hidden_states: Any
) -> StructuredPlan | None:
    stash, ehs = handle.stash, encoder_hidden_states
    if isinstance(ehs, torch.Tensor) and ehs.dim() == 4 and ehs.shape[1] == 1:
        ehs = ehs[:, 0]  # (B, 1, L, C) → (B, L, C): Allegro's pipeline adds a singleton axis
    if stash is None or not isinstance(ehs, torch.Tensor) or ehs.dim() != 3:
        return None
    n = stash.cond.shape[0]
    if ehs.shape[0] % n or ehs.shape[1:] != stash.cond.shape[1:]:
        return None
    key = (ehs.dtype, ehs.device)
    if key not in stash.projected:
        project = family.projection(handle.model)
        mapped = []
        for stack, single in stash.rows:
            stack, single = stack.to(ehs), single.to(ehs)
            if project is not None and stack.shape[0] > 1:
                stack, single = project(stack), project(single[None])[0]
            mapped.append((stack, single))
        stash.projected[key] = mapped
    cond = stash.cond.to(ehs)
    rows = {
        b: stash.projected[key][b % n]
        for b in range(ehs.shape[0])
        if stash.projected[key][b % n][0].shape[0] > 1 and torch.equal(ehs[b], cond[b % n])
    }
    return StructuredPlan(rows, ehs.shape[0]) if rows else None


def _cross_attention_names(model: torch.nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if getattr(module, "is_cross_attention", False)}


def enable_structured_guidance(pipe: Any, parser: str = "auto", mode: str = "average") -> StructuredGuidanceHandle:
    """Structured cross-attention guidance on a stock pipeline (Feng et al. 2023, Training-Free Structured Diffusion
    Guidance); returns a handle whose `disable()` undoes it."""
    options = StructuredGuidanceOptions(parser=parser, mode=mode)
    family = family_for_pipeline(pipe, "guidance").guidance
    model = getattr(pipe, family.model_attr)
    if getattr(model, HANDLE_ATTR, None) is not None:
        raise RuntimeError("structured guidance is already enabled on this pipeline; disable it first")
    names = _cross_attention_names(model)
    if not names:
        raise ValueError(f"found no cross-attention module in {type(model).__name__} for structured guidance")
    originals = dict(attention_processors(model))
    state = StructuredState()
    handle = StructuredGuidanceHandle(pipe, model, options, originals, state, pipe.__dict__.get("encode_prompt"))
    processors = {
        key: StructuredCrossAttnProcessor(proc, state, mode) if key.removesuffix(".processor") in names else proc
        for key, proc in originals.items()
    }
    set_attention_processors(model, processors)

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        state.plan = _plan(handle, family, ehs)

    def post_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state.plan = None

    handle.hooks = [
        model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        model.register_forward_hook(post_hook, with_kwargs=True, always_call=True),
    ]
    pipe.encode_prompt = _wrap_encode_prompt(pipe, family, handle)
    setattr(model, HANDLE_ATTR, handle)
    return handle


def disable_structured_guidance(pipe: Any) -> None:
    """Restore the exact processors, `encode_prompt` and hooks (Feng et al. 2023, Structured Diffusion Guidance)."""
    model = getattr(pipe, family_for_pipeline(pipe, "guidance").guidance.model_attr)
    handle: StructuredGuidanceHandle | None = getattr(model, HANDLE_ATTR, None)
    if handle is None:
        return
    set_attention_processors(model, handle.originals)
    for hook in handle.hooks:
        hook.remove()
    if handle.encode_prompt is None:
        pipe.__dict__.pop("encode_prompt", None)
    else:
        pipe.encode_prompt = handle.encode_prompt
    handle.state.plan, handle.stash = None, None
    delattr(model, HANDLE_ATTR)

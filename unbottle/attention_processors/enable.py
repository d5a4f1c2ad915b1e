"""`enable_sparse_attention` / `disable_sparse_attention`: one call on a pipeline or its denoiser, exactly undone."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..families import family_for_model
from .attach import attach, scheduler_steps, sparse_modules
from .config import SparseAttentionConfig
from .context_parallel import sequence_shards
from .diffusers_compat import default_processor, remove_hooks, require_supported_diffusers
from .engine import PatternStore
from .handle import HANDLE_ATTR, PipelineSparseAttention, SparseAttentionHandle
from .processor import SparseAttnProcessor
from .state import LAYER_HOOK, MODEL_HOOK
from .transformers_attention import (
    disable_transformers_sparse_attention,
    enable_transformers_sparse_attention,
    is_transformers_model,
)


def language_model_of(pipe_or_model: object) -> torch.nn.Module | None:
    """The transformers model of a diffusion-LM pipeline (its `.model`) or the model itself; None for diffusers."""
    if is_transformers_model(pipe_or_model):
        return pipe_or_model
    if not isinstance(pipe_or_model, torch.nn.Module) and not any(
        isinstance(getattr(pipe_or_model, attr, None), torch.nn.Module) for attr in ("transformer", "unet")
    ):
        inner = getattr(pipe_or_model, "model", None)
        return inner if is_transformers_model(inner) else None
    return None


def attention_processors(model: torch.nn.Module) -> dict[str, object]:
    """`model.attn_processors`, also for a denoiser without diffusers' AttentionMixin (Lumina2, HiDream, ...)."""
    if hasattr(model, "attn_processors"):
        return model.attn_processors
    return {f"{name}.processor": module.get_processor() for name, module in model.named_modules()
            if hasattr(module, "get_processor")}  # fmt: skip


def set_attention_processors(model: torch.nn.Module, processors: dict[str, object]) -> None:
    """`model.set_attn_processor(processors)`, also for a denoiser without diffusers' AttentionMixin."""
    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(processors)
        return
    for name, module in model.named_modules():
        if hasattr(module, "set_processor") and f"{name}.processor" in processors:
            module.set_processor(processors[f"{name}.processor"])


def denoiser_of(pipe_or_model: object) -> tuple[torch.nn.Module, object | None]:
    """(denoiser, pipeline or None) from a diffusers pipeline or its transformer/unet."""
    if isinstance(pipe_or_model, torch.nn.Module):
        if is_transformers_model(pipe_or_model):
            raise ValueError(
                f"{type(pipe_or_model).__name__} is a transformers model: its sparse attention (SparseD) keeps "
                "per-generation patterns in memory and has no diffusers denoiser; saving and loading head patterns "
                "applies to diffusers pipelines"
            )
        return pipe_or_model, None
    for attr in ("transformer", "unet"):
        model = getattr(pipe_or_model, attr, None)
        if isinstance(model, torch.nn.Module):
            return model, pipe_or_model
    if isinstance(getattr(pipe_or_model, "model", None), torch.nn.Module):
        return denoiser_of(pipe_or_model.model)
    raise ValueError(f"expected a diffusers pipeline or its transformer/unet, got {type(pipe_or_model).__name__}")


_DENOISER = re.compile(r"(transformer|unet)(_\d+)?")  # pipeline components that denoise: Wan 2.2's transformer_2


def denoisers_of(pipe: object) -> dict[str, torch.nn.Module]:
    """A pipeline's denoisers by component name (`transformer`, `transformer_2`, `unet`), each model once."""
    components = getattr(pipe, "components", None)
    names = list(components) if isinstance(components, dict) else ["transformer", "unet"]
    found: dict[str, torch.nn.Module] = {}
    for name in names:
        model = getattr(pipe, name, None)
        if (
            _DENOISER.fullmatch(name)
            and isinstance(model, torch.nn.Module)
            and all(m is not model for m in found.values())
        ):
            found[name] = model
    return found


def sparse_handle(pipe_or_model: object) -> SparseAttentionHandle | PipelineSparseAttention | None:
    """The sparse-attention handle of a denoiser, or of a pipeline (one view over all its enabled denoisers)."""
    if not isinstance(pipe_or_model, torch.nn.Module):
        handles = {name: h for name, model in denoisers_of(pipe_or_model).items()
                   if (h := getattr(model, HANDLE_ATTR, None)) is not None}  # fmt: skip
        if len(handles) > 1:
            return PipelineSparseAttention(handles, next(iter(handles.values())).config)
    model, _ = denoiser_of(pipe_or_model)
    return getattr(model, HANDLE_ATTR, None)


def _share_clock(handles: list[SparseAttentionHandle]) -> None:
    """One step clock for several denoisers of a pipeline: an expert that takes over mid-generation continues the
    step count, and a new generation seen by any of them clears every denoiser's layer states. An expert that hands
    over releases its layers' statistics (Re-ttention's ρ and R, B·H·N·D per layer and CFG branch: about 27 GB for
    Wan 2.2 A14B at 81 frames 480p) and refreshes them should it run again."""
    hooks = [h.clock for h in handles]
    running: list[SparseAttentionHandle | None] = [None]

    def taking_over(handle: SparseAttentionHandle) -> Callable[[], None]:
        def on_forward() -> None:
            previous, running[0] = running[0], handle
            if previous is not None and previous is not handle:
                for layer in previous.layer_hooks.values():
                    layer.states.clear()

        return on_forward

    for handle in handles:
        handle.clock.on_forward = taking_over(handle)
    callbacks = [(hook.on_new_generation, hook.on_rename) for hook in hooks]

    def on_new_generation(branch: str) -> None:
        for new_generation, _ in callbacks:
            new_generation(branch)

    def on_rename(old: str, new: str) -> None:
        for _, rename in callbacks:
            if rename is not None:
                rename(old, new)

    for hook in hooks:
        hook.clocks = hooks[0].clocks  # one dict of per-branch clocks
        hook.on_new_generation, hook.on_rename = on_new_generation, on_rename


def enable_sparse_attention(
    pipe_or_model: object, config: SparseAttentionConfig
) -> SparseAttentionHandle | PipelineSparseAttention:
    """Sparse self-attention (Re-ttention reshape + SparseD cached patterns) on every denoiser of a pipeline (Wan 2.2's
    two experts), on one denoiser, or on a transformers diffusion LM (or its pipeline's `.model`) through
    transformers' AttentionInterface (SparseD)."""
    if not isinstance(config, SparseAttentionConfig):
        raise TypeError(f"config must be an unbottle.SparseAttentionConfig, got {type(config).__name__}")
    language_model = language_model_of(pipe_or_model)
    if language_model is not None and config.coverage is not None:
        raise ValueError(
            f"SparseAttentionConfig.coverage={config.coverage} applies to diffusers denoisers; SparseD on a "
            f"transformers model ({type(language_model).__name__}) selects by density: leave coverage None"
        )
    if language_model is not None:  # a diffusion-LM pipeline knows its mask token (LLaDA2Pipeline.mask_token_id)
        mask_id = getattr(pipe_or_model, "mask_token_id", None) if pipe_or_model is not language_model else None
        mask_id = mask_id if isinstance(mask_id, int) and not isinstance(mask_id, bool) else None
        return enable_transformers_sparse_attention(language_model, config, mask_id)
    if not isinstance(pipe_or_model, torch.nn.Module):
        denoisers = denoisers_of(pipe_or_model)
        if len(denoisers) > 1:
            for model in denoisers.values():  # every denoiser supported before any changes
                family_for_model(model, "sparse")
            handles: dict[str, SparseAttentionHandle] = {}
            try:
                for name, model in denoisers.items():
                    handles[name] = _enable_denoiser(model, pipe_or_model, config)
            except BaseException:
                for handle in handles.values():
                    handle.disable()
                raise
            _share_clock(list(handles.values()))
            return PipelineSparseAttention(handles, config)
    model, pipe = denoiser_of(pipe_or_model)
    return _enable_denoiser(model, pipe, config)


def _enable_denoiser(
    model: torch.nn.Module, pipe: object | None, config: SparseAttentionConfig
) -> SparseAttentionHandle:
    family = family_for_model(model, "sparse")
    if getattr(model, HANDLE_ATTR, None) is not None or any(
        isinstance(p, SparseAttnProcessor) for p in attention_processors(model).values()
    ):
        raise RuntimeError(
            f"sparse attention is already enabled on this {type(model).__name__}; call "
            "unbottle.disable_sparse_attention first to change its config"
        )
    selected = sparse_modules(model, family.attention)
    if not selected:
        raise ValueError(f"found no self-attention module in {type(model).__name__} to make sparse")
    sequence_shards(model, selected)  # context parallelism it cannot run (ring, heads) refused before any change
    require_supported_diffusers()  # before anything changes: the hooks below read diffusers internals
    originals = dict(attention_processors(model))
    store = PatternStore()
    processors = {}
    for key, processor in originals.items():
        name = key.removesuffix(".processor")
        processors[key] = (
            SparseAttnProcessor(config, processor, name=name, store=store) if name in selected else processor
        )
    set_attention_processors(model, dict(processors))  # (diffusers pops the entries of the dict it is given)
    attachment = attach(model, config, scheduler_steps(pipe) if pipe is not None else None)
    for key, processor in processors.items():  # each layer exists before any forward: torch.compile traces no setup
        if isinstance(processor, SparseAttnProcessor):
            processor.bind(model.get_submodule(key.removesuffix(".processor")))
    handle = SparseAttentionHandle(model, config, store, originals, family=family, layer_hooks=attachment.layer_hooks,
                                   clock=attachment.clock, undo=disable_sparse_attention)  # fmt: skip
    setattr(model, HANDLE_ATTR, handle)
    return handle


def disable_sparse_attention(pipe_or_model: object) -> None:
    """Restore the exact processors (the same objects) and remove every hook sparse attention added; on a
    transformers model, the exact attention implementation of every config."""
    language_model = language_model_of(pipe_or_model)
    if language_model is not None:
        disable_transformers_sparse_attention(language_model)
        return
    expected = "disable_sparse_attention expects a diffusers pipeline, its transformer/unet, or a transformers model"
    if not isinstance(pipe_or_model, torch.nn.Module):
        denoisers = denoisers_of(pipe_or_model)
        if len(denoisers) > 1:
            for model in denoisers.values():
                disable_sparse_attention(model)
            return
    try:
        model, _ = denoiser_of(pipe_or_model)
    except ValueError:
        raise ValueError(f"{expected}, got {type(pipe_or_model).__name__}") from None
    if not hasattr(model, "attn_processors") and not any(hasattr(m, "get_processor") for m in model.modules()):
        raise ValueError(f"{expected}; {type(model).__name__} has no attention processors")
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is not None:
        set_attention_processors(model, handle.originals)
        delattr(model, HANDLE_ATTR)
    else:  # the drop-in form: put each module's stock processor back
        current = attention_processors(model)
        if not any(isinstance(p, SparseAttnProcessor) for p in current.values()):
            return
        modules = dict(model.named_modules())
        restored = {}
        for key, processor in current.items():
            module = modules[key.removesuffix(".processor")]
            if isinstance(processor, SparseAttnProcessor):
                processor = processor.stock_processor(module)
                if processor is None:  # never called: the family's default
                    processor = default_processor(module)
            restored[key] = processor
        if any(p is None for p in restored.values()):
            raise RuntimeError("cannot tell the stock processors of a drop-in SparseAttnProcessor that never ran")
        set_attention_processors(model, restored)
        for processor in current.values():
            if isinstance(processor, SparseAttnProcessor):
                processor.forget()
    remove_hooks(model, MODEL_HOOK, LAYER_HOOK)

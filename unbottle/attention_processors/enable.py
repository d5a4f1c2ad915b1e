"""`enable_sparse_attention` / `disable_sparse_attention`: one call on a pipeline or its denoiser, exactly undone."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry

from .adapters import FamilyAdapter, adapter_for
from .attach import attach, scheduler_steps, sparse_modules
from .config import SparseAttentionConfig
from .processor import SparseAttnProcessor
from .state import LAYER_HOOK, MODEL_HOOK, LayerStateHook, PatternStore
from .transformers_attention import (
    DLMSparseAttentionHandle,
    disable_transformers_sparse_attention,
    enable_transformers_sparse_attention,
    is_transformers_model,
)

HANDLE_ATTR = "_unbottle_sparse"


@dataclass
class SparseAttentionHandle:
    """What `enable_sparse_attention` changed, to undo it exactly, and the patterns it caches."""

    model: torch.nn.Module
    config: SparseAttentionConfig
    adapter: FamilyAdapter
    originals: dict[str, object]  # the model's processors before, by `attn_processors` key (same objects)
    store: PatternStore
    layer_hooks: dict[str, LayerStateHook] = field(default_factory=dict)

    @property
    def pattern_computations(self) -> dict[str, int]:
        """How many times each layer computed a pattern (cached patterns: once per resolution)."""
        return dict(self.store.computed)

    def reset(self) -> None:
        """Forget every layer's statistics and the step clocks (the cached patterns stay)."""
        for hook in self.layer_hooks.values():
            hook.states.clear()
        clock = HookRegistry.check_if_exists_or_initialize(self.model).get_hook(MODEL_HOOK)
        if clock is not None:
            clock.clocks.clear()

    def disable(self) -> None:
        disable_sparse_attention(self.model)


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


def enable_sparse_attention(
    pipe_or_model: object, config: SparseAttentionConfig
) -> SparseAttentionHandle | DLMSparseAttentionHandle:
    """Sparse self-attention (Re-ttention reshape + SparseD cached patterns) on a pipeline's denoiser, or on a
    transformers diffusion LM (or its pipeline's `.model`) through transformers' AttentionInterface (SparseD)."""
    if not isinstance(config, SparseAttentionConfig):
        raise TypeError(f"config must be an unbottle.SparseAttentionConfig, got {type(config).__name__}")
    language_model = language_model_of(pipe_or_model)
    if language_model is not None:  # a diffusion-LM pipeline knows its mask token (LLaDA2Pipeline.mask_token_id)
        mask_id = getattr(pipe_or_model, "mask_token_id", None) if pipe_or_model is not language_model else None
        mask_id = mask_id if isinstance(mask_id, int) and not isinstance(mask_id, bool) else None
        return enable_transformers_sparse_attention(language_model, config, mask_id)
    model, pipe = denoiser_of(pipe_or_model)
    adapter = adapter_for(model)
    if getattr(model, HANDLE_ATTR, None) is not None or any(
        isinstance(p, SparseAttnProcessor) for p in model.attn_processors.values()
    ):
        raise RuntimeError(
            f"sparse attention is already enabled on this {type(model).__name__}; call "
            "unbottle.disable_sparse_attention first to change its config"
        )
    selected = sparse_modules(model, adapter)
    if not selected:
        raise ValueError(f"found no self-attention module in {type(model).__name__} to make sparse")
    originals = dict(model.attn_processors)
    store = PatternStore()
    processors = {}
    for key, processor in originals.items():
        name = key.removesuffix(".processor")
        processors[key] = (
            SparseAttnProcessor(config, processor, name=name, store=store) if name in selected else processor
        )
    model.set_attn_processor(processors)
    attachment = attach(model, config, scheduler_steps(pipe) if pipe is not None else None)
    handle = SparseAttentionHandle(model, config, adapter, originals, store, attachment.layer_hooks)
    setattr(model, HANDLE_ATTR, handle)
    return handle


def _detach(model: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.remove_hook(MODEL_HOOK, recurse=False)
    for module in model.modules():
        if hasattr(module, "_diffusers_hook") and module._diffusers_hook.get_hook(LAYER_HOOK) is not None:
            module._diffusers_hook.remove_hook(LAYER_HOOK, recurse=False)
    registry.invalidate_child_registries_cache()


def disable_sparse_attention(pipe_or_model: object) -> None:
    """Restore the exact processors (the same objects) and remove every hook sparse attention added; on a
    transformers model, the exact attention implementation of every config."""
    language_model = language_model_of(pipe_or_model)
    if language_model is not None:
        disable_transformers_sparse_attention(language_model)
        return
    model, _ = denoiser_of(pipe_or_model)
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is not None:
        model.set_attn_processor(handle.originals)
        delattr(model, HANDLE_ATTR)
    else:  # the drop-in form: put each module's stock processor back
        current = model.attn_processors
        if not any(isinstance(p, SparseAttnProcessor) for p in current.values()):
            return
        modules = dict(model.named_modules())
        restored = {}
        for key, processor in current.items():
            module = modules[key.removesuffix(".processor")]
            if isinstance(processor, SparseAttnProcessor):
                processor = processor.stock_processor(module)
                if processor is None:  # never called: the family's default
                    processor = module._default_processor_cls() if hasattr(module, "_default_processor_cls") else None
            restored[key] = processor
        if any(p is None for p in restored.values()):
            raise RuntimeError("cannot tell the stock processors of a drop-in SparseAttnProcessor that never ran")
        model.set_attn_processor(restored)
        for processor in current.values():
            if isinstance(processor, SparseAttnProcessor):
                processor.forget()
    _detach(model)

"""The diffusers front: `SparseAttnProcessor` wraps a family's stock processor and catches its one scaled-dot-product
call.

Legacy processors (UNet, SD3, PixArt, CogVideoX) call `F.scaled_dot_product_attention` directly; dispatcher-aware
ones (Flux, Wan, HunyuanVideo, LTX) reach it through diffusers' `native` backend. A catch (sdpa_catch.py), open only
while the wrapped processor runs, hands that call's q/k/v (B, H, N, D) — after projections, QK-norm and RoPE — to the
layer's `SparseLayer`, which runs the engine with the denoiser clock's step and token layout, so no model processor
code is copied. Calls that are not self-attention pass through untouched. Under Ulysses context parallelism the
engine attends in the family layout's token order (context_parallel.py) and hands back the order the ranks gathered.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch

from ..families.layout import TokenLayout
from .attach import Attachment, attach, first_forward_info, running_denoiser, scheduler_steps
from .compiled import register_layer
from .config import SparseAttentionConfig
from .context_parallel import context_parallel_config, in_order
from .diffusers_compat import attends_by_sdpa, default_processor, has_hook, remove_hooks
from .engine import AttentionCall, DiTPatterns, PatternStore, attend
from .handle import HANDLE_ATTR
from .schedule import StepRule
from .sdpa_catch import catching, learn
from .state import CURRENT_FORWARD, LAYER_HOOK, MODEL_HOOK, LayerStateHook, ModelClockHook, layer_state_hook


@dataclass
class SparseLayer:
    """One sparse self-attention layer of a denoiser: its name, per-branch state hook, shared config and patterns."""

    name: str
    config: SparseAttentionConfig
    hook: LayerStateHook
    store: PatternStore
    clock: ModelClockHook | None = None  # drop-in form: the clock attached mid-forward holds that forward's info
    rule: StepRule = field(init=False)
    token: torch.Tensor = field(init=False)  # how the compiled op (compiled.py) finds this layer

    def __post_init__(self) -> None:
        self.rule = StepRule(self.config, "or use unbottle.enable_sparse_attention(pipe, config).")
        self.token = register_layer(self)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor | None:  # fmt: skip
        """Sparse attention for this call (q/k/v (B, H, N, D)), or None when this step runs the stock dense SDPA."""
        cfg = self.config
        if cfg.density >= 1.0:
            return None  # every block: the stock SDPA is the exact and fastest answer
        info = CURRENT_FORWARD.get()
        if info is None and self.clock is not None:
            info = self.clock.pending
        state = self.hook.state()
        if info is None:  # no denoiser clock (drop-in processor): steps are this layer's calls
            kind = self.rule.kind(state.calls, stacklevel=3)
        else:
            kind = self.rule.kind(info.step, info.num_steps, by_timestep=info.timestep is not None,
                                  full_until=info.full_until, stacklevel=3)  # fmt: skip
        state.calls += 1
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        layout = (info.layout if info is not None else None) or TokenLayout()
        patterns = DiTPatterns(self.name, cfg, self.store, layout)
        order = info.shards.order(layout, q.shape[2], q.device) if info is not None and info.shards else None
        if order is None:
            return attend(AttentionCall(q, k, v, scale, attn_mask), kind, state, patterns, cfg)
        gather, scatter = order  # context parallelism: attend in the layout's token order, hand back the gathered one
        q, k, v = (x.index_select(2, gather) for x in (q, k, v))  # (B, H, N, D)
        out = attend(AttentionCall(q, k, v, scale, in_order(attn_mask, gather)), kind, state, patterns, cfg)
        return None if out is None else out.index_select(2, scatter)


def stock_processor_for(attn: torch.nn.Module, encoder_hidden_states, image_rotary_emb) -> object:
    """The stock processor a module of a supported family runs by default (for the drop-in form)."""
    from diffusers.models import attention_processor as ap

    default = default_processor(attn)
    if default is not None:  # Flux, Wan, LTX (AttentionModuleMixin)
        return default
    joint = getattr(attn, "add_q_proj", None) is not None
    if image_rotary_emb is not None and (joint or getattr(attn, "to_out", None) is None):
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

        return HunyuanVideoAttnProcessor2_0()  # HunyuanVideo double (joint) and single-stream blocks
    if encoder_hidden_states is not None and not joint and not getattr(attn, "is_cross_attention", False):
        return ap.CogVideoXAttnProcessor2_0()  # CogVideoX: text concatenated inside the processor
    if joint:
        return ap.JointAttnProcessor2_0()  # SD3 joint attention
    return ap.AttnProcessor2_0()  # UNet SD/SDXL, PixArt (self and cross)


@functools.cache
def _takes_attention_mask(processor_type: type) -> bool:
    """Whether a processor class's `__call__` has an `attention_mask` parameter or takes extra positionals."""
    try:
        parameters = inspect.signature(processor_type.__call__).parameters
    except (TypeError, ValueError):
        return True
    return "attention_mask" in parameters or any(p.kind is p.VAR_POSITIONAL for p in parameters.values())


@functools.cache
def _parameters(processor_type: type) -> tuple[inspect.Parameter, ...]:
    """The parameters of a processor class's `__call__` after `self` (empty when it has no signature)."""
    try:
        return tuple(inspect.signature(processor_type.__call__).parameters.values())[1:]
    except (TypeError, ValueError):
        return ()


def _positional_names(processor_type: type) -> list[str]:
    """The names of a processor's positional-or-keyword parameters (`attn`, `hidden_states`, ...)."""
    return [p.name for p in _parameters(processor_type) if p.kind is p.POSITIONAL_OR_KEYWORD]


def _showing_keywords_of(call, processor: object):
    """`call` (a bound `SparseAttnProcessor.__call__`) with a signature that also names `processor`'s keywords:
    diffusers' attention modules pass a processor only the keyword arguments its signature names."""
    own = inspect.signature(call)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    extra = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=None)
             for p in _parameters(type(processor)) if p.kind in kinds and p.name not in own.parameters]  # fmt: skip
    if not extra:
        return call
    *params, var_keyword = own.parameters.values()

    def wrapper(*args, **kwargs):
        return call(*args, **kwargs)

    wrapper.__signature__ = own.replace(parameters=[*params, *extra, var_keyword])
    return wrapper


class SparseAttnProcessor:
    """Sparse self-attention processor (Re-ttention reshape, SparseD cached patterns) around a stock processor.

    Drop-in: `model.set_attn_processor(SparseAttnProcessor(config))` — each module then runs its family's stock
    processor with sparse SDPA. `enable_sparse_attention` builds one per module around the module's own processor
    and adds the denoiser clock (timestep-aware schedule, token layout for the window pattern).
    """

    def __init__(
        self, config: SparseAttentionConfig, processor: object | None = None, *, name: str | None = None,
        store: PatternStore | None = None,
    ) -> None:  # fmt: skip
        if not isinstance(config, SparseAttentionConfig):
            raise TypeError(f"config must be an unbottle.SparseAttentionConfig, got {type(config).__name__}")
        self.config, self.processor, self.name = config, processor, name
        self.store = store if store is not None else PatternStore()
        self._layers: dict[int, SparseLayer] = {}
        self._inner: dict[int, object] = {}
        self._attachment: Attachment | None | bool = None  # drop-in: None = not looked yet, False = no denoiser
        self._bound: SparseLayer | None = None  # the layer of the one module this processor serves, once bound
        if processor is not None:  # e.g. Qwen-Image's text mask, Z-Image's RoPE reach the stock processor
            shown = _showing_keywords_of(self.__call__, processor)
            if shown != self.__call__:  # a wrapper only where the processor names keywords of its own
                self.__call__ = shown

    @property
    def _parallel_config(self) -> object | None:
        """The wrapped processor's parallel config: diffusers' `enable_parallelism` sets it on each processor."""
        return getattr(self.processor, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, config: object | None) -> None:
        if hasattr(self.processor, "_parallel_config"):  # the stock processor runs the all-to-all
            self.processor._parallel_config = config

    def stock_processor(self, attn: torch.nn.Module) -> object | None:
        """The processor this one wraps for `attn` (None for a drop-in that never ran on it)."""
        return self.processor if self.processor is not None else self._inner.get(id(attn))

    def forget(self) -> None:
        """Drop the drop-in form's per-module state (after `disable_sparse_attention`)."""
        self._layers.clear()
        self._inner.clear()
        self._bound = None
        self._attachment = None

    def _drop_in_attach(self, attn: torch.nn.Module) -> None:
        """Drop-in form, first call: find the running denoiser and give it the clock and statistics hooks."""
        found = running_denoiser()
        if found is not None and context_parallel_config(found[0]) is not None:
            raise RuntimeError(
                "the drop-in SparseAttnProcessor does not run under context parallelism; use "
                "unbottle.enable_sparse_attention(model, config) after model.enable_parallelism(...)"
            )
        self._attachment = False  # looked once
        if found is None:
            return
        model, bound, pipe = found
        if has_hook(model, MODEL_HOOK):  # attached before: by enable, by another drop-in, or by one since replaced
            self._replace_earlier_drop_in(model)
        self._attachment = attach(model, self.config, scheduler_steps(pipe) if pipe is not None else None)
        first_forward_info(self._attachment, bound)  # this forward began before the clock: its info waits there

    def _replace_earlier_drop_in(self, model: torch.nn.Module) -> None:
        """Remove the hooks of an earlier drop-in processor no module runs any more (`set_attn_processor` replaced
        it); refuse where sparse attention is still set on the model another way."""
        if getattr(model, HANDLE_ATTR, None) is not None:
            raise RuntimeError(
                f"sparse attention is enabled on this {type(model).__name__} by unbottle.enable_sparse_attention; "
                "call unbottle.disable_sparse_attention first to set a SparseAttnProcessor"
            )
        processors = (getattr(module, "processor", None) for module in model.modules())
        if any(isinstance(p, SparseAttnProcessor) and p is not self for p in processors):
            raise RuntimeError(
                f"another SparseAttnProcessor is set on modules of this {type(model).__name__}; set one "
                "SparseAttnProcessor for the whole model (model.set_attn_processor(SparseAttnProcessor(config)))"
            )
        remove_hooks(model, MODEL_HOOK, LAYER_HOOK)

    def bind(self, attn: torch.nn.Module) -> None:
        """Make `attn`'s sparse layer now (enable does, so that a compiled forward finds it made)."""
        if not getattr(attn, "is_cross_attention", False):
            self._bound = self._layer(attn)

    def _layer(self, attn: torch.nn.Module) -> SparseLayer | None:
        """This module's sparse layer, or None when the drop-in form runs on a module the family keeps dense."""
        if self._bound is not None:  # one module's processor (enable_sparse_attention), its layer made by `bind`
            return self._bound
        layer = self._layers.get(id(attn))
        if layer is None:
            name = self.name
            if self.processor is None and self._attachment:  # drop-in: names and selection from the attachment
                name = self._attachment.names.get(id(attn))
                if name is None:
                    return None
            clock = self._attachment.clock if self.processor is None and self._attachment else None
            layer = SparseLayer(name or f"layer{len(self._layers)}", self.config, layer_state_hook(attn), self.store,
                                clock)  # fmt: skip
            self._layers[id(attn)] = layer
        return layer

    def __call__(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, *args, image_rotary_emb=None, rotary_emb=None, temb=None,
        **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        inner = self.processor
        if inner is None:
            inner = self._inner.get(id(attn))
            if inner is None:
                inner = self._inner[id(attn)] = stock_processor_for(attn, encoder_hidden_states, image_rotary_emb)
        named = {"image_rotary_emb": image_rotary_emb, "rotary_emb": rotary_emb, "temb": temb}
        kwargs.update({key: value for key, value in named.items() if value is not None})
        call_args = (attn, hidden_states, encoder_hidden_states, attention_mask, *args)
        if attention_mask is None and not args and not _takes_attention_mask(type(inner)):
            call_args = call_args[:3]  # no mask parameter (Kandinsky 5): its 4th positional is another input
        if not args and any(name in kwargs for name in _positional_names(type(inner))[2:4]):
            # the module named an input the processor takes 3rd or 4th (HiDream's image mask, Qwen-Image's text mask)
            call_args = call_args[:2]
            named = {"encoder_hidden_states": encoder_hidden_states, "attention_mask": attention_mask}
            kwargs.update({key: value for key, value in named.items() if value is not None})
        if self.processor is None and self._attachment is None:
            self._drop_in_attach(attn)
        layer = None if getattr(attn, "is_cross_attention", False) else self._layer(attn)
        if layer is None:
            return inner(*call_args, **kwargs)
        catch, opened = catching(layer, type(inner))
        with opened:
            out = inner(*call_args, **kwargs)
        learn(type(inner), catch)
        if catch.calls == 0 and not attends_by_sdpa(inner):  # on SDPA, the processor itself skipped attention
            raise RuntimeError(
                f"unbottle sparse attention: {type(inner).__name__} on {type(attn).__name__} made no "
                "scaled_dot_product_attention call; set the model's attention backend to 'native' "
                "(model.reset_attention_backend()) to use sparse attention"
            )
        return out

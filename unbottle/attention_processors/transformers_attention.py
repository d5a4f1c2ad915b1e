"""Sparse attention as a transformers attention implementation (`AttentionInterface`), with SparseD's schedule.

`enable_transformers_sparse_attention(model, config)` registers the attention function `"unbottle_sparse"` (and a
mask builder under the same name), records each config's attention implementation, switches the model to ours with
`model.set_attn_implementation`, and binds every submodule to the model's `DLMSparseState`. Each attention call then
receives transformers' arguments — q (B, H, Nq, D), k/v (B, H_kv, Nk, D) after projections, norms and RoPE, the mask
the original implementation's mask builder made (4-D bool for sdpa, 4-D additive for eager, or None) — and:

- on dense steps (the first `full_steps` of a generation; any step at density 1.0) calls the original implementation
  with the very same arguments, so its output is the stock one exactly;
- on sparse steps runs block-sparse attention (`block_sparse_attention`: the PyTorch reference on CPU,
  FlexAttention on CUDA; the reference whenever a padding/causal mask must be honoured) over a per-row, per-head
  block pattern. SparseD (Wang et al., 2025): the pattern ("cached") is computed once per generation and layer (and
  sequence length: each growing block window of `LLaDA2Pipeline` gets its own), at the first sparse step (with
  reshape, at the refresh step just before it), from that step's exact attention — block-pooled softmax mass, the
  top `density` of key blocks per query block — with *isolated selection*: the top-k over all keys, of which only the
  prompt's blocks are kept, plus a separate top-k among the generated region's blocks (its softmax taken over those
  keys alone), each k proportional to its region's size; the diagonal block is always kept. "dynamic" re-selects
  every sparse step from block-mean q·k, "window" keeps the nearest blocks. With `reshape=True`, Re-ttention's
  ρ·O_sparse + R correction (Chen et al., 2025) is applied as on DiTs; SparseD does not use it.

Differences from SparseD's code (INV-WZQ/SparseD): its pattern step still outputs dense attention (so it runs
`int(T·skip) + 2` dense steps); here exactly `config.num_full_steps(T)` steps are dense and the pattern step is
sparse. Its k is `int(n·select) + 1`, unclamped; here `ceil(density·n)`, clamped to the blocks there are. Padding
(a 2-D or 4-D attention mask) is honoured and patterns are chosen per row among the row's real key blocks, so a row
padded at the end (or at the front by whole blocks) gets the pattern and output of its unpadded batch-1 run.

Models: any transformers model whose attention dispatches through `ALL_ATTENTION_FUNCTIONS` (Gemma, DiffusionGemma,
LLaMA, Qwen2/3, Mistral, ...). Originals "sdpa" and "eager" are delegated to exactly; others (flash-attention,
flex_attention) run their dense steps through SDPA while enabled. Remote-code LLaDA / Dream use their own attention
modules and are refused.

This module is the transformers front of the one engine (engine.py: `attend` with `SparseDPatterns`): the
attention function, its masks, the original implementations and enable/disable. Step awareness (which step of which
generation a forward is: notifications, `dlm_step_callback`, or every forward of the model counted as a step when
nothing tells): dlm_state.py.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .block_mask import num_blocks
from .config import SparseAttentionConfig
from .dlm_state import DLMSparseState
from .engine import AttentionCall, SparseDPatterns, attend
from .handle import HANDLE_ATTR, SparseAttentionHandle
from .schedule import StepKind

ATTENTION_NAME = "unbottle_sparse"
EXACT_ORIGINALS = ("sdpa", "eager")  # delegated to as is on dense steps; others run dense steps through sdpa
SUPPORTED_MODELS = (
    "transformers models whose attention dispatches through AttentionInterface / ALL_ATTENTION_FUNCTIONS (Gemma, "
    "DiffusionGemma, LLaMA, Qwen2/3, Mistral, ...)"
)
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")  # attention extras the sparse path cannot apply


@dataclass
class _Binding:
    """What an attention module of an enabled model needs at call time."""

    state: DLMSparseState
    name: str
    original: str  # the implementation its config named before enable


_BINDINGS: weakref.WeakKeyDictionary[torch.nn.Module, _Binding] = weakref.WeakKeyDictionary()
_CONFIG_ORIGINALS: dict[int, tuple[object, str]] = {}  # id(config) -> (config, its implementation before enable)
_EAGER: dict[type, Callable | None] = {}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# -- the original implementations ----------------------------------------------------------------------------------
def _eager_of(module: torch.nn.Module) -> Callable | None:
    """The `eager_attention_forward` of the module's modeling file (every transformers model file defines one)."""
    cls = type(module)
    if cls not in _EAGER:
        _EAGER[cls] = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
    return _EAGER[cls]


def _effective(original: str) -> str:
    return original if original in EXACT_ORIGINALS else "sdpa"


def _original_forward(module: torch.nn.Module, original: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _effective(original)
    if name == "eager":
        fn = _eager_of(module)
        if fn is not None:
            return fn
        name = "sdpa"
    return ALL_ATTENTION_FUNCTIONS[name]


def sparse_attention_mask(*args, config: object | None = None, **kwargs):
    """The mask builder registered as "unbottle_sparse": the original implementation's (sdpa's for the others)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    entry = _CONFIG_ORIGINALS.get(id(config)) if config is not None else None
    original = _effective(entry[1]) if entry is not None and entry[0] is config else "sdpa"
    builder = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(original, sdpa_mask)
    return builder(*args, config=config, **kwargs)


def register() -> None:
    """Register "unbottle_sparse" with transformers' AttentionInterface and AttentionMaskInterface (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, sparse_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sparse_attention_mask)


# -- masks ---------------------------------------------------------------------------------------------------------
def _normalize_mask(
    module: torch.nn.Module, mask: torch.Tensor | None, kwargs: dict, nq: int, nk: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(mask for the attention math, bool "may attend" mask for selection), each broadcastable to (B, 1, Nq, Nk)."""
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise TypeError(f"unbottle sparse attention got a {type(mask).__name__} attention mask; expected a tensor")
    if mask is not None and mask.dim() == 2:  # (B, Nk) padding mask (flash-style builders)
        mask = mask.bool()[:, None, None, :]
    if mask is not None:
        mask = mask[..., :nk]
        allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        return mask, allowed
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if not is_causal or nq == 1:
        return None, None
    offset = nk - nq  # queries are the last nq positions of the keys (a cache in front)
    causal = torch.arange(nk, device=device)[None, :] <= torch.arange(nq, device=device)[:, None] + offset
    causal = causal[None, None]  # (1, 1, Nq, Nk)
    return causal, causal


def sparse_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """transformers attention function "unbottle_sparse": SparseD block-sparse attention on sparse steps (Wang et
    al., 2025), the model's original implementation on dense ones; returns ((B, Nq, H, D), None)."""
    binding = _BINDINGS.get(module)
    if binding is None:
        raise RuntimeError(
            f'attn_implementation "{ATTENTION_NAME}" needs per-model state: call '
            "unbottle.enable_sparse_attention(model, config) instead of setting it by hand"
        )
    state, cfg = binding.state, binding.state.config
    original = _original_forward(module, binding.original)

    def dense() -> tuple[torch.Tensor, torch.Tensor | None]:
        return original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    b, h, nq, d = query.shape  # (B, H, Nq, D)
    nk = key.shape[2]  # key/value (B, H_kv, Nk, D)
    if cfg.density >= 1.0 or num_blocks(nk, cfg.block_size) < 2:
        return dense()  # every block kept (or a single block): the original is exact and fastest
    if dropout > 0.0 or any(kwargs.get(name) is not None for name in _UNSUPPORTED_KWARGS):
        extras = [n for n in _UNSUPPORTED_KWARGS if kwargs.get(n) is not None] + (["dropout"] if dropout else [])
        message = (
            f"unbottle sparse attention: {type(module).__name__} passes {', '.join(extras)}, which block-sparse "
            "attention does not apply; those layers stay dense"
        )
        _warn_once(f"extras:{type(module).__name__}", message)
        return dense()
    if kwargs.get("output_attentions"):
        _warn_once("output_attentions", "unbottle sparse attention returns no attention weights on sparse steps")
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        return dense()  # e.g. a BlockMask a custom builder made: nothing to honour it with
    kind = state.kind()
    if kind is StepKind.DENSE:
        return dense()
    n_rep = h // key.shape[1]
    k = key.repeat_interleave(n_rep, dim=1) if n_rep > 1 else key  # (B, H, Nk, D), as transformers' repeat_kv
    v = value.repeat_interleave(n_rep, dim=1) if n_rep > 1 else value
    mask, allowed = _normalize_mask(module, attention_mask, kwargs, nq, nk, query.device)
    scale = d**-0.5 if scaling is None else float(scaling)
    patterns = SparseDPatterns(binding.name, cfg, state.store, state.generation.attention_mask, state.prompt_lengths)
    out = attend(AttentionCall(query, k, v, scale, mask, allowed), kind, state.layer(binding.name), patterns, cfg)
    if out is None:
        return dense()
    return out.to(query.dtype).transpose(1, 2).contiguous(), None  # (B, H, Nq, Dv) -> (B, Nq, H, Dv)


# -- enable / disable ----------------------------------------------------------------------------------------------
def is_transformers_model(obj: object) -> bool:
    """True for a transformers `PreTrainedModel`."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(obj, PreTrainedModel)


def _configs(model: torch.nn.Module) -> list[object]:
    """Every config of the model: its own, its sub-configs (any depth), and those of PreTrainedModel submodules."""
    from transformers import PreTrainedModel

    found: dict[int, object] = {}
    queue = [model.config] + [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
    while queue:
        config = queue.pop()
        if config is None or id(config) in found:
            continue
        found[id(config)] = config
        queue.extend(getattr(config, name, None) for name in getattr(config, "sub_configs", {}) or {})
    return list(found.values())


def dispatches_through_interface(model: torch.nn.Module) -> bool:
    """Whether some module of the model comes from a file that calls `ALL_ATTENTION_FUNCTIONS` (static check)."""
    import inspect

    for name in {type(m).__module__ for m in model.modules()}:
        try:
            source = inspect.getsource(sys.modules[name])
        except (KeyError, OSError, TypeError):
            continue
        if "ALL_ATTENTION_FUNCTIONS" in source:
            return True
    return False


def _mask_token_id(model: torch.nn.Module) -> int | None:
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        value = getattr(config, "mask_token_id", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def enable_transformers_sparse_attention(
    model: torch.nn.Module, config: SparseAttentionConfig, mask_token_id: int | None = None
) -> SparseAttentionHandle:
    """SparseD sparse attention on a transformers (diffusion) LM through its AttentionInterface; see module doc.

    `mask_token_id` (else the config's / generation config's) lets the state find the prompt boundary and spot new
    generations without notifications."""
    if getattr(model, HANDLE_ATTR, None) is not None:
        raise RuntimeError(
            f"sparse attention is already enabled on this {type(model).__name__}; call "
            "unbottle.disable_sparse_attention first to change its config"
        )
    if not (type(model)._can_set_attn_implementation() and dispatches_through_interface(model)):
        raise ValueError(
            f"{type(model).__name__} does not dispatch its attention through transformers' AttentionInterface (its "
            f"attention modules are its own, as in remote-code LLaDA / Dream), so sparse attention cannot reach it. "
            f"Supported: {SUPPORTED_MODELS}"
        )
    register()
    configs = _configs(model)
    originals = [(c, getattr(c, "_attn_implementation_internal", None)) for c in configs]
    resolved = {id(c): (c, c._attn_implementation or "eager") for c in configs}
    top = resolved[id(model.config)][1]
    for name in {v for _, v in resolved.values()} - set(EXACT_ORIGINALS):
        message = (
            f"unbottle sparse attention: the original attention implementation {name!r} is not delegated to "
            "exactly; dense steps run through SDPA while sparse attention is on"
        )
        _warn_once(f"original:{name}", message)
    model.set_attn_implementation(ATTENTION_NAME)
    if model.config._attn_implementation != ATTENTION_NAME:
        for c, value in originals:
            c._attn_implementation_internal = value
        raise ValueError(f"{type(model).__name__} refused attn_implementation {ATTENTION_NAME!r}. Supported: "
                         f"{SUPPORTED_MODELS}")  # fmt: skip
    _CONFIG_ORIGINALS.update(resolved)
    state = DLMSparseState(config, mask_token_id=mask_token_id if mask_token_id is not None else _mask_token_id(model))
    for name, module in model.named_modules():
        module_config = getattr(module, "config", None)
        entry = resolved.get(id(module_config)) if module_config is not None else None
        _BINDINGS[module] = _Binding(state, name or "<model>", entry[1] if entry is not None else top)

    def before_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        state.before_forward(ids if isinstance(ids, torch.Tensor) else None)

    hook = model.register_forward_pre_hook(before_forward, with_kwargs=True)
    handle = SparseAttentionHandle(model, config, state.store, originals, state=state, hook=hook,
                                   undo=disable_transformers_sparse_attention)  # fmt: skip
    setattr(model, HANDLE_ATTR, handle)
    return handle


def disable_transformers_sparse_attention(model: torch.nn.Module) -> None:
    """Restore every config's attention implementation exactly and drop the state, hook and bindings; no-op if off."""
    handle: SparseAttentionHandle | None = getattr(model, HANDLE_ATTR, None)
    if handle is None:
        return
    for c, value in handle.originals:
        c._attn_implementation_internal = value
        _CONFIG_ORIGINALS.pop(id(c), None)
    handle.hook.remove()
    for module in model.modules():
        _BINDINGS.pop(module, None)
    delattr(model, HANDLE_ATTR)

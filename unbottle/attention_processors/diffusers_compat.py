"""The diffusers internals sparse attention relies on, read in this one module and checked against the versions
they were written for.

Sparse attention keeps its step clock and per-CFG-branch state in diffusers' hook registry: stateful hooks
(`_is_stateful`) that diffusers resets at the end of each pipeline call, a `StateManager` on each hook that receives
the pipeline's `cache_context` (read from its `_context`: the branch name, and the step index and count where the
pipeline gives them), the replaced forward of a `new_forward` hook (`fn_ref.original_forward`) and each module's
registry (`_diffusers_hook`); the drop-in processor also builds an attention module's default processor
(`_default_processor_cls`). None of that is public API, so the first use checks the installed diffusers against
`SUPPORTED` (pyproject.toml's pin) and fails with a message naming both versions.
"""

from __future__ import annotations

from collections.abc import Callable

import diffusers
import torch
from packaging.specifiers import SpecifierSet

try:
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager
except ImportError:  # a diffusers without them: `require_supported_diffusers` names the versions that have them
    HookRegistry = StateManager = None
    ModelHook = BaseState = object

SUPPORTED = ">=0.42.1,<0.44"  # the diffusers versions these reads were written for (pyproject.toml pins the same)
NO_BRANCH = "_"  # the state key of a call outside any cache context
_checked = False


def require_supported_diffusers() -> None:
    """Raise a RuntimeError naming the installed and the supported diffusers versions unless they match."""
    global _checked
    if _checked:
        return
    installed = str(getattr(diffusers, "__version__", "unknown"))
    try:
        supported = SpecifierSet(SUPPORTED).contains(installed, prereleases=True)
    except ValueError:  # packaging's InvalidVersion: not a version number at all
        supported = False
    if not supported:
        raise RuntimeError(
            f"unbottle sparse attention relies on diffusers internals (hook registry, cache context) written for "
            f"diffusers {SUPPORTED}, but diffusers {installed} is installed; install a supported version: "
            f"pip install 'diffusers{SUPPORTED}'"
        )
    _checked = True


class _ContextOnly(BaseState):
    """Placeholder state: our StateManagers only receive diffusers' cache context (the branch name)."""

    def reset(self) -> None:
        pass


class StatefulHook(ModelHook):
    """A diffusers hook that diffusers resets (`reset_state`) at the end of each pipeline call and whose `contexts`
    receive the pipeline's `cache_context`."""

    _is_stateful = True

    def __init__(self) -> None:
        require_supported_diffusers()
        super().__init__()
        self.contexts = StateManager(_ContextOnly)

    def context(self) -> object | None:
        """The cache context the pipeline set for this call (`CacheContext`), or None outside any."""
        return self.contexts._context

    def branch(self) -> str:
        """This call's CFG branch: the cache context's name ("cond", "uncond", ...), else `NO_BRANCH`."""
        context = self.contexts._context
        return context.name if context is not None else NO_BRANCH

    def original_forward(self) -> Callable:
        """The forward this hook's `new_forward` replaced (set when the hook is registered)."""
        return self.fn_ref.original_forward


def default_processor(module: torch.nn.Module) -> object | None:
    """A new instance of the attention module's default processor class, or None for a module without one."""
    return module._default_processor_cls() if hasattr(module, "_default_processor_cls") else None


# diffusers attention backends that run torch's scaled_dot_product_attention (the call sparse attention catches)
SDPA_BACKENDS = ("native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math")


def attends_by_sdpa(processor: object) -> bool:
    """Whether a processor's attention goes through torch's SDPA: a legacy processor (no backend of its own) or a
    dispatcher-aware one whose backend (its own, else diffusers' active one) is a native SDPA backend."""
    if not hasattr(processor, "_attention_backend"):
        return True
    backend = processor._attention_backend
    if backend is None:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        backend = _AttentionBackendRegistry.get_active_backend()[0]
    return str(getattr(backend, "value", backend)) in SDPA_BACKENDS


def context_step(context: object | None) -> tuple[int | None, int | None]:
    """(step index, number of steps) a pipeline put in its cache context, each None where it gives none."""
    return getattr(context, "step_index", None), getattr(context, "num_inference_steps", None)


def context_parallel_group(config: object) -> object:
    """The process group of all the ranks a diffusers `ContextParallelConfig` spans (ring × Ulysses)."""
    return config._flattened_mesh.get_group()


def ulysses_group(config: object) -> object:
    """The process group of a diffusers `ContextParallelConfig`'s Ulysses ranks (its all-to-all spans them)."""
    return config._ulysses_mesh.get_group()


def forward_under(hook: ModelHook) -> Callable:
    """The forward a registered hook's `new_forward` replaced."""
    return hook.fn_ref.original_forward


def registry(module: torch.nn.Module) -> HookRegistry:
    """The module's hook registry, created on first use."""
    require_supported_diffusers()
    return HookRegistry.check_if_exists_or_initialize(module)


def get_hook(module: torch.nn.Module, name: str) -> ModelHook | None:
    """The hook registered on `module` under `name`, or None."""
    return registry(module).get_hook(name)


def has_hook(module: torch.nn.Module, name: str) -> bool:
    """Whether `module` has a hook registered under `name` (no registry is created)."""
    hooks = getattr(module, "_diffusers_hook", None)
    return hooks is not None and hooks.get_hook(name) is not None


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register `hook` on `module` under `name`."""
    registry(module).register_hook(hook, name)


def register_state_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register `hook`, one that only holds state (no forward behaviour), on `module` under `name`. diffusers wraps the
    module's forward for every hook; where this is the module's only hook the wrapper is dropped again, so the module
    keeps its class's forward: a per-module wrapper makes torch.compile (2.11) guard on its identity and compile every
    repeated block anew. The registry still holds the hook, so cache contexts and state resets reach it."""
    registry(module).register_hook(hook, name)
    if list(module._diffusers_hook.hooks) == [name]:
        _drop_forward_attribute(module)


def _drop_forward_attribute(module: torch.nn.Module) -> None:
    """Delete an instance `forward` that is a wrapper of, or the same as, the module's class forward (a lone state
    hook's, or what diffusers put back on removing it)."""
    forward = module.__dict__.get("forward")
    target = getattr(forward, "__wrapped__", forward)
    if getattr(target, "__self__", None) is module and getattr(target, "__func__", None) is type(module).forward:
        del module.forward


def refresh_contexts(model: torch.nn.Module) -> None:
    """After hooks were added or removed under `model`: let its cache contexts reach exactly the hooks there now."""
    registry(model).invalidate_child_registries_cache()


def remove_hooks(model: torch.nn.Module, model_hook: str, layer_hook: str) -> None:
    """Remove `model_hook` from `model` and `layer_hook` from every module under it that has one."""
    registry(model).remove_hook(model_hook, recurse=False)
    for module in model.modules():
        if hasattr(module, "_diffusers_hook") and module._diffusers_hook.get_hook(layer_hook) is not None:
            module._diffusers_hook.remove_hook(layer_hook, recurse=False)
            if not module._diffusers_hook.hooks:
                _drop_forward_attribute(module)
    refresh_contexts(model)

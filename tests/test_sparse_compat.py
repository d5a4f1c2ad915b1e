"""The diffusers versions sparse attention supports: checked on first use, refused before anything changes."""

import re
from pathlib import Path

import diffusers
import pytest

import unbottle
from unbottle.attention_processors import diffusers_compat
from unbottle.attention_processors.state import LayerStateHook
from unbottle.testing import tiny_pixart_pipeline

CONFIG = unbottle.SparseAttentionConfig(density=0.3, block_size=8)


def test_supported_range_is_the_pinned_one():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.findall(r'"diffusers([<>=!~][^"]*)"', pyproject) == [diffusers_compat.SUPPORTED]


@pytest.mark.parametrize("installed", ["0.42.1", "0.43.0.dev0", "0.43.2"])
def test_supported_versions_pass(monkeypatch, installed):
    monkeypatch.setattr(diffusers, "__version__", installed)
    monkeypatch.setattr(diffusers_compat, "_checked", False)
    diffusers_compat.require_supported_diffusers()
    assert diffusers_compat._checked


@pytest.fixture(scope="module")
def model():
    return tiny_pixart_pipeline().transformer


@pytest.mark.parametrize("installed", ["0.44.0", "0.44.0.dev0", "0.41.0", "not-a-version"])
def test_unsupported_version_is_refused_before_anything_changes(monkeypatch, model, installed):
    monkeypatch.setattr(diffusers, "__version__", installed)
    monkeypatch.setattr(diffusers_compat, "_checked", False)
    before = dict(model.attn_processors)
    expected = rf"diffusers >=0\.42\.1,<0\.44, but diffusers {re.escape(installed)} is installed"
    with pytest.raises(RuntimeError, match=expected):
        unbottle.enable_sparse_attention(model, CONFIG)
    assert all(model.attn_processors[key] is processor for key, processor in before.items())
    assert getattr(model, "_unbottle_sparse", None) is None
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in model.modules())
    with pytest.raises(RuntimeError, match=expected):  # the drop-in form's state hooks check too
        LayerStateHook()
    assert not diffusers_compat._checked


def _sparse_modules(model):
    return [m for m in model.modules() if getattr(m, "_diffusers_hook", None) is not None
            and m._diffusers_hook.get_hook("unbottle_sparse_layer") is not None]  # fmt: skip


def test_layer_state_hooks_leave_the_class_forward_in_place():
    model = tiny_pixart_pipeline().transformer
    handle = unbottle.enable_sparse_attention(model, CONFIG)
    modules = _sparse_modules(model)
    assert modules  # the hooks are registered (cache contexts and resets reach them) ...
    for module in modules:  # ... and no per-module forward wrapper is left, which compile would guard on
        assert isinstance(module._diffusers_hook.get_hook("unbottle_sparse_layer"), LayerStateHook)
        assert "forward" not in module.__dict__ and module.forward.__func__ is type(module).forward
    handle.disable()
    assert not _sparse_modules(model)
    assert all("forward" not in m.__dict__ for m in model.modules() if hasattr(m, "processor"))


def test_a_hook_registered_before_keeps_running():
    from diffusers.hooks import HookRegistry, ModelHook

    class Count(ModelHook):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def pre_forward(self, module, *args, **kwargs):
            self.calls += 1
            return args, kwargs

    pipe = tiny_pixart_pipeline()
    attn = pipe.transformer.transformer_blocks[0].attn1
    count = Count()
    HookRegistry.check_if_exists_or_initialize(attn).register_hook(count, "count")
    handle = unbottle.enable_sparse_attention(pipe, CONFIG)
    assert "forward" in attn.__dict__  # two hooks: diffusers' wrappers stay
    pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="latent", use_resolution_binning=False)
    assert count.calls > 0
    handle.disable()
    assert attn._diffusers_hook.get_hook("count") is count and "forward" in attn.__dict__
    calls = count.calls
    pipe("a cat", num_inference_steps=1, height=32, width=32, output_type="latent", use_resolution_binning=False)
    assert count.calls > calls

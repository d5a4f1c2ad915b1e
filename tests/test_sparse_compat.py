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

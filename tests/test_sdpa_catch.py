"""How a wrapped processor's SDPA call reaches its sparse layer: by name (swap) or by mode, learned per class."""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch.nn.functional import scaled_dot_product_attention as bound_sdpa

from unbottle.attention_processors import sdpa_catch
from unbottle.attention_processors.sdpa_catch import catching, learn

ORIGINAL = F.scaled_dot_product_attention


class FlipLayer:
    """A layer whose 'sparse' answer is recognisable: the values reversed along the tokens."""

    token = torch.tensor(0)

    def __init__(self, inner_sdpa: bool = False) -> None:
        self.calls, self.inner_sdpa = 0, inner_sdpa

    def attend(self, q, k, v, attn_mask=None, scale=None):
        self.calls += 1
        if self.inner_sdpa:  # an engine that itself calls SDPA (a dense refresh) must reach torch's, not itself
            return F.scaled_dot_product_attention(q, k, v).flip(2)
        return v.flip(2)


def qkv(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, n, 4, generator=g) for _ in range(3))  # (B, H, N, D)


def by_name(q, k, v):
    return F.scaled_dot_product_attention(q, k, v) + 0  # looked up on the module at call time


def import_bound(q, k, v):
    return bound_sdpa(q, k, v) + 0  # bound when this test module was imported: a swap cannot reach it


def new_type(fn):
    return type(f"Processor_{fn.__name__}", (), {"__call__": staticmethod(fn)})


def run(processor_type, layer, q, k, v):
    catch, opened = catching(layer, processor_type)
    with opened:
        out = processor_type.__call__(q, k, v)
    learn(processor_type, catch)
    return out, catch, opened


@pytest.mark.parametrize("fn, learned", [(by_name, True), (import_bound, False)])
def test_both_kinds_of_processor_are_caught_and_the_route_is_learned(fn, learned):
    processor_type, layer = new_type(fn), FlipLayer()
    q, k, v = qkv()
    for call in range(3):
        out, catch, opened = run(processor_type, layer, q, k, v)
        torch.testing.assert_close(out, v.flip(2), rtol=0, atol=0)  # the layer's answer, not dense SDPA
        assert catch.calls == 1
        assert layer.calls == call + 1
        if call:  # after the first call: the swap alone where SDPA is looked up by name, else the mode
            assert isinstance(opened, sdpa_catch.SwapSDPA if learned else sdpa_catch.CatchMode)
            assert catch.verify is False
    assert sdpa_catch._BY_NAME[processor_type] is learned
    assert F.scaled_dot_product_attention is ORIGINAL


def test_no_call_teaches_nothing():
    processor_type = new_type(lambda q, k, v: v * 2)
    out, catch, _ = run(processor_type, FlipLayer(), *qkv())
    assert catch.calls == 0 and processor_type not in sdpa_catch._BY_NAME


def test_the_layers_own_sdpa_calls_are_not_routed_back():
    processor_type, layer = new_type(by_name), FlipLayer(inner_sdpa=True)
    q, k, v = qkv()
    for _ in range(2):  # verifying (swap + mode), then the swap alone
        out, catch, _ = run(processor_type, layer, q, k, v)
        torch.testing.assert_close(out, ORIGINAL(q, k, v).flip(2))
        assert catch.calls == 1
    assert layer.calls == 2


def test_cross_attention_passes_through():
    processor_type, layer = new_type(by_name), FlipLayer()
    q, k, v = qkv(6)
    k2, v2 = qkv(9, seed=1)[1:]
    for _ in range(2):
        out, catch, _ = run(processor_type, layer, q, k2, v2)
        torch.testing.assert_close(out, ORIGINAL(q, k2, v2), rtol=0, atol=0)
    assert layer.calls == 0


def test_the_name_is_restored_after_an_error_and_nested_swaps():
    def failing(q, k, v):
        F.scaled_dot_product_attention(q, k, v)
        raise ValueError("inside the processor")

    outer = sdpa_catch.SwapSDPA(sdpa_catch.SDPACatch(FlipLayer()))
    inner_layer = FlipLayer()
    with outer:
        assert F.scaled_dot_product_attention is not ORIGINAL
        with pytest.raises(ValueError, match="inside the processor"):
            with sdpa_catch.SwapSDPA(sdpa_catch.SDPACatch(inner_layer)):
                failing(*qkv())
        assert F.scaled_dot_product_attention is not ORIGINAL  # the outer swap is still open
        assert inner_layer.calls == 1 and outer.catch.calls == 0
        q, k, v = qkv()
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), v.flip(2), rtol=0, atol=0)
    assert F.scaled_dot_product_attention is ORIGINAL
    assert outer.catch.calls == 1


def test_other_threads_pass_straight_through():
    q, k, v = qkv()
    layer, seen = FlipLayer(), {}
    with sdpa_catch.SwapSDPA(sdpa_catch.SDPACatch(layer)):
        worker = threading.Thread(target=lambda: seen.update(out=F.scaled_dot_product_attention(q, k, v)))
        worker.start()
        worker.join()
    torch.testing.assert_close(seen["out"], ORIGINAL(q, k, v), rtol=0, atol=0)
    assert layer.calls == 0


def test_a_patch_made_before_is_what_passes_through_and_is_put_back(monkeypatch):
    calls = []

    def patched(*args, **kwargs):  # e.g. another library's SDPA replacement
        calls.append(1)
        return ORIGINAL(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", patched)
    q, k, v = qkv()
    k2, v2 = qkv(9, seed=1)[1:]
    with sdpa_catch.SwapSDPA(sdpa_catch.SDPACatch(FlipLayer())):
        F.scaled_dot_product_attention(q, k2, v2)  # cross attention: passed on to the patch
    assert calls == [1]
    assert F.scaled_dot_product_attention is patched


def test_a_call_under_compilation_uses_the_mode_and_teaches_nothing(monkeypatch):
    processor_type = new_type(by_name)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = qkv()
    out, catch, opened = run(processor_type, FlipLayer(), q, k, v)
    assert isinstance(opened, sdpa_catch.CatchMode) and catch.calls == 1
    assert processor_type not in sdpa_catch._BY_NAME
    torch.testing.assert_close(out, ORIGINAL(q, k, v))  # the op finds no layer for this token: dense SDPA

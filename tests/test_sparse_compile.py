"""Sparse attention inside `torch.compile`: `compile_repeated_blocks(fullgraph=True)` traces every block in one graph
around the `unbottle::sparse_sdpa` op, compiles the block once for all layers, and gives the eager sparse outputs
(CPU, the aot_eager backend: Inductor's CPU build would take minutes)."""

from __future__ import annotations

import pytest
import torch

import unbottle
from unbottle.attention_processors.compiled import register_layer, sparse_sdpa
from unbottle.testing.video import tiny_wan_pipeline

TIMESTEPS = (900, 700, 500, 300, 100)


def _inputs(model):
    torch.manual_seed(0)
    x = torch.randn(1, model.config.in_channels, 5, 16, 16)  # (B, C, F, H, W): 320 tokens after patching
    text = torch.randn(1, 8, model.config.text_dim)
    return x, text


def _run(model, x, text):
    with torch.no_grad():
        return [model(x, torch.tensor([t]), text, return_dict=False)[0] for t in TIMESTEPS]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("pattern", ["cached", "window", "dynamic"])
def test_compiled_blocks_give_the_eager_sparse_outputs_without_recompiling(pattern, monkeypatch):
    model = tiny_wan_pipeline().transformer.eval()
    x, text = _inputs(model)
    dense = _run(model, x, text)
    config = unbottle.SparseAttentionConfig(density=0.4, block_size=16, pattern=pattern, full_steps=1,
                                            refresh_every=2)  # fmt: skip
    handle = unbottle.enable_sparse_attention(model, config)
    eager = _run(model, x, text)
    handle.disable()
    unbottle.enable_sparse_attention(model, config)  # fresh statistics and patterns, as the eager run began
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # one graph for both blocks, every step
    model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    compiled = _run(model, x, text)
    changed = 0
    for d, e, c in zip(dense, eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=0, atol=1e-6)
        changed += float((e - d).abs().max()) > 1e-4  # a sparse step: not the dense output
    torch.testing.assert_close(eager[0], dense[0], rtol=0, atol=1e-6)  # the first step is dense
    assert changed >= 2


def test_op_finds_its_layer_and_falls_back_to_exact_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)

    class Layer:
        def __init__(self, out):
            self.out, self.calls = out, 0

        def attend(self, q, k, v, attn_mask=None, scale=None):
            self.calls += 1
            assert scale == 0.3
            return self.out

    sparse, dense_step = Layer(torch.ones(1, 2, 12, 8)), Layer(None)
    assert torch.equal(sparse_sdpa(q, k, v, None, 0.3, register_layer(sparse)), torch.ones(1, 2, 12, 8))
    torch.testing.assert_close(sparse_sdpa(q, k, v, None, 0.3, register_layer(dense_step)), exact)
    assert sparse.calls == 1 and dense_step.calls == 1
    token = register_layer(Layer(None))
    torch._dynamo.reset()
    import gc

    gc.collect()  # the layer is gone: the token resolves to nothing and the op is exact attention
    torch.testing.assert_close(sparse_sdpa(q, k, v, None, 0.3, token), exact)


def test_op_passes_torch_library_checks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    torch.library.opcheck(sparse_sdpa, (q, k, v, None, 0.125, torch.tensor(0)))

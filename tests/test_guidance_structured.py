"""Structured cross-attention guidance (Feng et al. 2023) on the tiny SD, SDXL, PixArt and Wan fixtures."""

from __future__ import annotations

import pytest
import torch

import unbottle
from unbottle.guidance import StructuredCrossAttnProcessor, noun_phrases, phrase_token_spans
from unbottle.guidance.processor import StructuredPlan, StructuredState
from unbottle.testing.image import tiny_sd3_pipeline, tiny_stable_diffusion_pipeline

PROMPT = "a red car and a white sheep"
RUN = dict(num_inference_steps=2, height=32, width=32, output_type="np")


def _run(pipe, prompt: str):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **RUN).images


@pytest.fixture(scope="module")
def pipe():
    return tiny_stable_diffusion_pipeline()


def _attn2(pipe):
    return next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2"))


def test_no_phrase_is_stock_and_disable_restores(pipe):
    stock, stock_phrase = _run(pipe, "sheep"), _run(pipe, PROMPT)
    originals = dict(pipe.unet.attn_processors)
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        assert (_run(pipe, "sheep") == stock).all()
        guided = _run(pipe, PROMPT)
        assert handle.stash is not None and not (guided == stock_phrase).all()
    finally:
        unbottle.disable_structured_guidance(pipe)
    restored = pipe.unet.attn_processors
    assert restored.keys() == originals.keys() and all(restored[k] is originals[k] for k in originals)
    assert "encode_prompt" not in pipe.__dict__
    assert (_run(pipe, PROMPT) == stock_phrase).all()


def test_splice_positions(pipe):
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        full = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0][0]  # (L, C)
        stack, single = handle.stash.rows[0]
        phrases = noun_phrases(PROMPT)
        assert stack.shape == (1 + len(phrases), *full.shape)
        assert torch.equal(stack[0], full)
        spans = phrase_token_spans(pipe.tokenizer, PROMPT, phrases)
        for i, (phrase, (s, e)) in enumerate(zip(phrases, spans, strict=True)):
            own = pipe.encode_prompt.__wrapped__(phrase, "cpu", 1, False)[0][0]
            assert torch.equal(stack[1 + i, s:e], own[1 : 1 + e - s])  # the phrase's tokens after its BOS
            assert torch.equal(stack[1 + i, :s], full[:s]) and torch.equal(stack[1 + i, e:], full[e:])
            assert torch.equal(single[s:e], own[1 : 1 + e - s])
    finally:
        handle.disable()


def _by_hand(attn, x, keys_from, values_from):
    """softmax(Q Kᵀ / √d) V through the module's own projections, heads split, then to_out: (1, N, D)."""
    h = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(keys_from), attn.to_v(values_from)
    q, k, v = (t.view(1, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(1, -1, h * q.shape[-1])
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("mode", ["average", "conjunction"])
def test_processor_averages_per_embedding_outputs(pipe, mode):
    torch.manual_seed(0)
    attn = _attn2(pipe)
    stock = attn.processor
    x = torch.randn(2, 16, attn.to_q.in_features)  # (B = [uncond, cond], N, D)
    ehs = torch.randn(2, 8, attn.to_k.in_features)  # (B, L, C)
    stack = torch.cat([ehs[1:], torch.randn(2, 8, ehs.shape[-1])])  # (1 + k, L, C), W_p first
    single = torch.randn(8, ehs.shape[-1])
    state = StructuredState(StructuredPlan({1: (stack, single)}))
    processor = StructuredCrossAttnProcessor(stock, state, mode)
    with torch.no_grad():
        out = processor(attn, x, ehs)
        expected_stock = stock(attn, x, ehs)
        if mode == "average":
            parts = [_by_hand(attn, x[1:], ehs[1:], stack[i : i + 1]) for i in range(3)]
        else:
            parts = [_by_hand(attn, x[1:], stack[j : j + 1], single[None]) for j in range(3)]
        expected = torch.stack(parts).mean(0)
    assert torch.equal(out[0], expected_stock[0])  # the unconditional row: stock, bit for bit
    torch.testing.assert_close(out[1:], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1:], expected_stock[1:])


def test_unsupported_pipeline_raises():
    with pytest.raises(ValueError, match="structured guidance supports"):
        unbottle.enable_structured_guidance(tiny_sd3_pipeline())
    with pytest.raises(ValueError, match="mode"):
        unbottle.enable_structured_guidance(tiny_stable_diffusion_pipeline(), mode="sum")


@pytest.mark.parametrize("family", ["sdxl", "pixart", "wan"])
def test_other_families_keep_stock_without_phrases_and_restore_on_disable(family):
    """SDXL, PixArt-Sigma and Wan: no phrase → stock output; phrases → another output; disable → stock, bit for bit."""
    import numpy as np

    from unbottle.testing import tiny_pixart_pipeline, tiny_sdxl_pipeline, tiny_wan_pipeline

    if family == "sdxl":
        pipe, kw = tiny_sdxl_pipeline(), {"height": 32, "width": 32}
    elif family == "pixart":
        pipe, kw = tiny_pixart_pipeline(), {"height": 32, "width": 32, "use_resolution_binning": False}
    else:
        pipe, kw = tiny_wan_pipeline(), {"height": 32, "width": 32, "num_frames": 1}

    def run(prompt):
        out = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", **kw)
        return np.asarray(out[0])

    stock_one, stock_two = run("circle"), run("a red circle and a blue square")
    model = pipe.unet if family == "sdxl" else pipe.transformer
    originals = dict(model.attn_processors)
    unbottle.enable_structured_guidance(pipe)
    one, two = run("circle"), run("a red circle and a blue square")
    unbottle.disable_structured_guidance(pipe)
    np.testing.assert_array_equal(stock_one, one)
    assert not np.array_equal(stock_two, two)
    np.testing.assert_array_equal(stock_two, run("a red circle and a blue square"))
    assert all(model.attn_processors[k] is originals[k] for k in originals)


def test_sdxl_splices_both_encoders_and_leaves_a_second_prompt_alone():
    """SDXL: a phrase's rows come from both text encoders at once (the concatenated channels); prompt_2 → stock."""
    from unbottle.testing import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        encode = pipe.encode_prompt.__wrapped__
        pipe.encode_prompt(prompt=PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
        full = encode(prompt=PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0][0]
        stack, _ = handle.stash.rows[0]
        assert full.shape == (77, 64) and stack.shape == (3, 77, 64)  # 32 + 32 channels: both encoders
        phrases = noun_phrases(PROMPT)
        for i, (phrase, (s, e)) in enumerate(zip(phrases, phrase_token_spans(pipe.tokenizer, PROMPT, phrases),
                                                 strict=True)):  # fmt: skip
            own = encode(prompt=phrase, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0][0]
            assert torch.equal(stack[1 + i, s:e], own[1 : 1 + e - s])  # both halves: the phrase's own encodings
            assert torch.equal(stack[1 + i, e:], full[e:])
        pipe.encode_prompt(prompt=PROMPT, prompt_2="a blue square", device="cpu", num_images_per_prompt=1,
                           do_classifier_free_guidance=True)  # fmt: skip
        assert handle.stash is None  # another text for text_encoder_2: no structure, the stock embeddings
    finally:
        handle.disable()

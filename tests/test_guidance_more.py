"""Structured cross-attention guidance (Feng et al. 2023) on the tiny Allegro, Latte and Cosmos-Predict2 pipelines: T5
text, denoisers without diffusers' AttentionMixin (processors reached per module), Allegro's (B, 1, L, C) text, Latte's
per-frame cross-attention rows and its fixed 120-token budget."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

import unbottle
from unbottle.guidance import StructuredCrossAttnProcessor
from unbottle.testing.allegro import tiny_allegro_pipeline
from unbottle.testing.cosmos import tiny_cosmos_pipeline
from unbottle.testing.latte import tiny_latte_pipeline

PROMPT = "a red circle and a blue square"  # word-level T5 tokens: a red circle and a blue square </s>
SPANS = [(0, 3), (4, 7)]  # "a red circle", "a blue square": no BOS, so the first word is token 0
# name → (fixture, __call__ arguments, encode_prompt arguments, denoiser calls per step)
CASES = {
    "allegro": (tiny_allegro_pipeline, dict(height=32, width=32, num_frames=8, max_sequence_length=16,
                                            clean_caption=False),
                dict(max_sequence_length=16, clean_caption=False), 1),
    "latte": (tiny_latte_pipeline, dict(height=16, width=16, video_length=2, clean_caption=False),
              dict(clean_caption=False), 1),
    "cosmos": (tiny_cosmos_pipeline, dict(height=64, width=64, max_sequence_length=16, negative_prompt="a green cube"),
               dict(max_sequence_length=16), 2),  # conditional and unconditional forwards apart
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    make, call, encode, calls = CASES[request.param]
    return request.param, make(), call, encode, calls


def _run(pipe, call: dict, prompt: str, steps: int = 2) -> torch.Tensor:
    out = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent",
               **call)  # fmt: skip
    return (out.frames if hasattr(out, "frames") else out.images).clone()


def _processors(model: torch.nn.Module) -> dict[str, object]:
    return {name: m.processor for name, m in model.named_modules() if isinstance(m, Attention)}


def test_phrases_change_the_output_and_disable_restores_it_exactly(case):
    name, pipe, call, _, _ = case
    stock_one, stock_two = _run(pipe, call, "circle"), _run(pipe, call, PROMPT)
    originals = _processors(pipe.transformer)
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        during = _processors(pipe.transformer)
        cross = {n for n, p in during.items() if isinstance(p, StructuredCrossAttnProcessor)}
        assert cross == {f"transformer_blocks.{i}.attn2" for i in range(2)}  # Latte's temporal blocks: self only
        assert all(during[n] is originals[n] for n in originals if n not in cross)
        assert all(during[n].processor is originals[n] for n in cross)
        one, two = _run(pipe, call, "circle"), _run(pipe, call, PROMPT)
        assert handle.stash is not None and handle.stash.rows[0][0].shape[0] == 3  # W_p and two phrases
    finally:
        unbottle.disable_structured_guidance(pipe)
    assert torch.equal(one, stock_one)  # no phrase: the stock output, bit for bit
    assert not torch.allclose(two, stock_two, atol=1e-3)
    restored = _processors(pipe.transformer)
    assert restored.keys() == originals.keys() and all(restored[n] is originals[n] for n in originals)
    assert "encode_prompt" not in pipe.__dict__ and not pipe.transformer._forward_pre_hooks
    assert torch.equal(_run(pipe, call, PROMPT), stock_two)


def test_each_phrase_is_spliced_at_its_tokens(case):
    name, pipe, _, encode, _ = case
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        own = pipe.encode_prompt.__wrapped__
        args = dict(do_classifier_free_guidance=False, device="cpu", **encode)
        pipe.encode_prompt(prompt=PROMPT, **args)
        full = own(prompt=PROMPT, **args)[0][0]  # (L, C)
        stack, single = handle.stash.rows[0]
        assert full.shape[0] == (8 if name == "latte" else 16)  # Latte keeps one prompt's own 7 + 1 tokens only
        assert stack.shape == (3, *full.shape) and torch.equal(stack[0], full)
        for i, (phrase, (s, e)) in enumerate(zip(("a red circle", "a blue square"), SPANS, strict=True)):
            alone = own(prompt=phrase, **args)[0][0]
            assert torch.equal(stack[1 + i, s:e], alone[: e - s]) and torch.equal(single[s:e], alone[: e - s])
            assert torch.equal(stack[1 + i, :s], full[:s]) and torch.equal(stack[1 + i, e:], full[e:])
    finally:
        handle.disable()


def _by_hand(attn: Attention, x: torch.Tensor, keys_from: torch.Tensor, values_from: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """softmax(Q Kᵀ / √d + bias) V through the module's own projections and q/k norms, then to_out: (1, N, D)."""
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
               for t in (attn.to_q(x), attn.to_k(keys_from), attn.to_v(values_from)))  # fmt: skip  # (1, H, ·, d)
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (1, H, N, L)
    if bias is not None:
        scores = scores + bias
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)  # (1, N, H·d)
    return attn.to_out[1](attn.to_out[0](out))


def _first_step_calls(pipe, call: dict, prompt: str, calls: int) -> list[tuple]:
    """(hidden_states, encoder_hidden_states, mask, output) of the first block's cross-attention, first step."""
    attn = pipe.transformer.transformer_blocks[0].attn2
    seen: list[tuple] = []

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append((x, kwargs.get("encoder_hidden_states"), kwargs.get("attention_mask"), output))

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        _run(pipe, call, prompt, steps=1)
    finally:
        handle.remove()
    return seen[:calls]


@pytest.mark.parametrize("mode", ["average", "conjunction"])
def test_cross_attention_rows_follow_the_paper_and_keep_the_rest_stock(case, mode):
    """At the first step the first cross-attention sees the same inputs with and without guidance: the conditional
    rows (Latte: one per frame) are Feng et al.'s structured attention over the projected stacks, the rest stock."""
    name, pipe, call, _, calls = case
    attn = pipe.transformer.transformer_blocks[0].attn2
    stock = _first_step_calls(pipe, call, PROMPT, calls)
    handle = unbottle.enable_structured_guidance(pipe, mode=mode)
    try:
        guided = _first_step_calls(pipe, call, PROMPT, calls)
        stack, single = handle.stash.rows[0]
        with torch.no_grad():
            project = getattr(pipe.transformer, "caption_projection", None) or (lambda t: t)
            stack, single = project(stack), project(single[None])  # (3, L, C), (1, L, C) as the module sees them
            frames = call.get("video_length", 1)
            conditional = []
            for (x, ehs, mask, out), (sx, sehs, _, stock_out) in zip(guided, stock, strict=True):
                assert torch.equal(x, sx) and torch.equal(ehs, sehs)
                rows = range(frames, 2 * frames) if x.shape[0] == 2 * frames else range(x.shape[0])
                if calls == 2 and len(conditional) == 1:
                    rows = range(0)  # Cosmos's second forward: the negative prompt
                for r in range(x.shape[0]):
                    if r not in rows:
                        assert torch.equal(out[r], stock_out[r])  # unconditional: stock, bit for bit
                        continue
                    bias = mask[r : r + 1, None] if mask is not None else None  # (1, 1, 1, L)
                    embeds = torch.cat([ehs[r : r + 1], stack[1:]])  # W_p as the module sees it, then W̄_1, W̄_2
                    xr = x[r : r + 1]  # (1, N, D)
                    if mode == "average":  # keys from W_p, values from each embedding
                        parts = [_by_hand(attn, xr, ehs[r : r + 1], embeds[j : j + 1], bias) for j in range(3)]
                    else:  # keys from each embedding, values from the all-phrases copy
                        parts = [_by_hand(attn, xr, embeds[j : j + 1], single, bias) for j in range(3)]
                    torch.testing.assert_close(out[r : r + 1], torch.stack(parts).mean(0), rtol=1e-5, atol=1e-5)
                    assert not torch.allclose(out[r], stock_out[r], atol=1e-4)
                conditional.append(len(rows))
        assert sum(conditional) == frames  # every frame's row of the one conditional sample
    finally:
        handle.disable()


def test_latte_keeps_a_long_prompt_to_its_120_tokens():
    """Latte truncates at 120 tokens whatever its tokenizer allows (512 here): a phrase past them is left out, one
    across the cut is spliced up to it."""
    pipe = tiny_latte_pipeline()
    prompt = "then " * 118 + PROMPT  # tokens 118… are the phrase words; token 119 is the end token after the cut
    handle = unbottle.enable_structured_guidance(pipe)
    try:
        own = pipe.encode_prompt.__wrapped__
        args = dict(do_classifier_free_guidance=False, device="cpu", clean_caption=False)
        pipe.encode_prompt(prompt=prompt, **args)
        full = own(prompt=prompt, **args)[0][0]
        stack, _ = handle.stash.rows[0]
        assert full.shape[0] == 120 and stack.shape == (3, *full.shape)  # "a blue square" was cut off
        for i, phrase in enumerate((PROMPT, "a red circle")):  # both start at token 118, only "a" is kept
            alone = own(prompt=phrase, **args)[0][0]
            assert torch.equal(stack[1 + i, 118], alone[0])
            assert torch.equal(stack[1 + i, :118], full[:118]) and torch.equal(stack[1 + i, 119:], full[119:])
    finally:
        handle.disable()

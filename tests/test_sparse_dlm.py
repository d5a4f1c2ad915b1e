"""SparseD sparse attention on transformers diffusion LMs: the AttentionInterface function and its schedule.

Tiny random LLaDA2-style / DiffusionGemma models for behaviour (exactness at density 1.0, dense steps equal to the
original implementation, patterns once per generation, padding, disable), and the shipped shapes DLM for quality
(retrieval accuracy at 30% of blocks).
"""

from __future__ import annotations

import random

import pytest
import torch

import unbottle
from unbottle.attention_processors import (
    SparseAttentionHandle,
    dlm_step_callback,
    notify_dlm_generation_start,
    notify_dlm_step,
)
from unbottle.testing import language as fixtures

BS = 8  # tokens per block on the tiny models (prompt 24 + 16 generated = 5 blocks)


def _config(**kwargs) -> unbottle.SparseAttentionConfig:
    return unbottle.SparseAttentionConfig(**{"block_size": BS, "reshape": False, "full_steps": 0, **kwargs})


def _document(tok, prompt: int, gen: int, seed: int = 0) -> torch.Tensor:
    """(1, prompt + gen) ids: random prompt words, then mask tokens."""
    words = torch.randint(7, len(tok), (1, prompt), generator=torch.Generator().manual_seed(seed))
    return torch.cat([words, torch.full((1, gen), tok.mask_token_id)], 1)


@torch.no_grad()
def _greedy(model, ids, mask_id, attention_mask=None, notify=True):
    """Greedy masked diffusion: one most-confident masked token per row and step; returns (ids, per-step logits)."""
    x = ids.clone()
    steps = int((x == mask_id).sum(1).max())
    history = []
    for step in range(steps):
        if notify:
            notify_dlm_step(model, step, steps)
        logits = model(x, attention_mask=attention_mask).logits.float()  # (B, N, V)
        history.append(logits)
        masked = x == mask_id
        confidence, token = logits.softmax(-1).max(-1)
        pick = confidence.masked_fill(~masked, -1.0).argmax(1)  # (B,)
        rows = torch.arange(x.shape[0])[masked.any(1)]
        x[rows, pick[rows]] = token[rows, pick[rows]]
    return x, history


def _run(model, tok, config, ids, prompt_length, attention_mask=None):
    """A whole generation with sparse attention on (dense if `config` is None): (ids, logits per step, handle)."""
    handle = unbottle.enable_sparse_attention(model, config) if config is not None else None
    try:
        notify_dlm_generation_start(model, prompt_length, int((ids == tok.mask_token_id).sum(1).max()),
                                    attention_mask=attention_mask)  # fmt: skip
        out, history = _greedy(model, ids, tok.mask_token_id, attention_mask)
        computed = handle.pattern_computations if handle is not None else {}
    finally:
        unbottle.disable_sparse_attention(model)
    return out, history, computed


@pytest.fixture(scope="module")
def llada():
    return fixtures.tiny_llada2()


def test_density_one_is_the_dense_model(llada):
    model, tok = llada
    ids = _document(tok, 24, 16)
    dense, dense_logits, _ = _run(model, tok, None, ids, 24)
    exact, exact_logits, computed = _run(model, tok, _config(density=1.0), ids, 24)
    assert torch.equal(dense, exact)
    assert all(torch.equal(a, b) for a, b in zip(dense_logits, exact_logits, strict=True))
    assert not computed  # density 1.0 keeps every block: the original implementation runs, nothing is selected
    # just under 1 every block is still kept, but through the block-sparse path, on every step (full_steps=0)
    tokens, logits, computed = _run(model, tok, _config(density=0.999), ids, 24)
    assert set(computed.values()) == {1} and len(computed) == model.config.num_hidden_layers
    assert torch.equal(tokens, dense)
    for a, b in zip(logits, dense_logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


@pytest.mark.parametrize("pattern, per_generation", [("cached", 1), ("window", 1), ("dynamic", 14)])
def test_dense_steps_are_exact_then_one_pattern_per_generation(llada, pattern, per_generation):
    """full_steps=2 of 16: steps 0–1 are the stock SDPA bit for bit; the pattern is made at step 2 and reused
    (SparseD), or re-selected on each of the 14 sparse steps ("dynamic"); a new generation makes a new one."""
    model, tok = llada
    ids = _document(tok, 24, 16, seed=1)
    _, dense_logits, _ = _run(model, tok, None, ids, 24)
    handle = unbottle.enable_sparse_attention(model, _config(density=0.4, full_steps=2, pattern=pattern))
    assert isinstance(handle, SparseAttentionHandle) and model.config._attn_implementation == "unbottle_sparse"
    try:
        counts = []
        notify_dlm_generation_start(model, 24, 16)
        x = ids.clone()
        with torch.no_grad():
            for step in range(16):
                notify_dlm_step(model, step, 16)
                logits = model(x).logits.float()
                counts.append(set(handle.pattern_computations.values()) or {0})
                if step < 2:
                    assert torch.equal(logits, dense_logits[step])  # dense steps: the original attention exactly
                elif step == 2:
                    assert (logits - dense_logits[step]).abs().max() > 1e-3  # 40% of the blocks: not dense
                masked = x == tok.mask_token_id
                confidence, token = logits.softmax(-1).max(-1)
                pick = int(confidence.masked_fill(~masked, -1.0).argmax(1))
                x[0, pick] = token[0, pick]
        assert counts[:2] == [{0}, {0}] and counts[2] == {1} and counts[-1] == {per_generation}
        if pattern == "cached":  # per-head patterns: the heads of a layer do not all keep the same blocks
            layer = handle.state.layers["model.layers.0.self_attn"]
            (indices, counts_) = next(iter(layer.patterns.values()))
            assert indices.shape[:2] == (1, model.config.num_attention_heads)
            assert not (torch.equal(indices[:, 0], indices[:, 1]) and torch.equal(counts_[:, 0], counts_[:, 1]))
        notify_dlm_generation_start(model, 24, 16)  # a new generation: its own pattern at its step 2
        for step in range(4):
            notify_dlm_step(model, step, 16)
            with torch.no_grad():
                model(ids)
        assert set(handle.pattern_computations.values()) == {per_generation + (1 if pattern != "dynamic" else 2)}
    finally:
        unbottle.disable_sparse_attention(model)


def test_isolated_selection_keeps_generated_blocks(llada):
    """SparseD's isolated selection: every query block keeps top blocks of the generated region too, even when the
    prompt's blocks hold all the attention mass a joint top-k would rank by."""
    from unbottle.attention_processors.patterns import isolated_selection

    scores = torch.tensor([[[0.5, 0.3, 0.2, 0.0, 0.0, 0.0]]])  # (H, nQ, nK): the generated blocks (3–5) score 0
    gen_scores = torch.tensor([[[0.0, 0.0, 0.0, 0.1, 0.6, 0.3]]])
    valid = torch.ones(6, dtype=torch.bool)
    joint = isolated_selection(scores, None, valid, None, 0.34)  # ceil(0.34 · 6) = 3 blocks, all in the prompt
    assert joint[0, 0].tolist() == [True, True, True, False, False, False]
    kept = isolated_selection(scores, gen_scores, valid, 3, 0.34)  # prompt: top 3 ∩ prompt; generated: top 2 of 3
    assert kept[0, 0].tolist() == [True, True, True, False, True, True]
    valid[0] = False  # a padding block is never kept, and the counts are of real blocks
    padded = isolated_selection(scores, None, valid, None, 0.34)  # ceil(0.34 · 5) = 2 of the 5 real blocks
    assert padded[0, 0].tolist() == [False, True, True, False, False, False]


@pytest.mark.parametrize("reshape", [True, False])
def test_reshape_option_reconstructs_the_refresh_step(llada, reshape):
    """reshape=True (Re-ttention, off for SparseD): the last dense step is a refresh that captures ρ and R, so the
    first sparse step on the same input reproduces dense attention; without it that step is plainly sparse."""
    model, tok = llada
    ids = _document(tok, 24, 16, seed=6)
    config = _config(density=0.4, full_steps=1, reshape=reshape, refresh_every=0)
    with torch.no_grad():
        dense = model(ids).logits
        handle = unbottle.enable_sparse_attention(model, config)
        try:
            notify_dlm_generation_start(model, 24, 16, total_steps=4)
            notify_dlm_step(model, 0, 4)
            torch.testing.assert_close(model(ids).logits, dense, atol=1e-5, rtol=0)
            notify_dlm_step(model, 1, 4)
            first_sparse = model(ids).logits
            assert set(handle.pattern_computations.values()) == {1}
        finally:
            unbottle.disable_sparse_attention(model)
    error = (first_sparse - dense).abs().max()
    assert error < 1e-4 if reshape else error > 1e-3


def test_batch_with_padding_equals_single_runs(llada):
    """Two rows of different lengths, the shorter padded at the end (a 2-D attention mask): each row's tokens and
    logits are those of its own batch-1 run, dense steps and sparse steps alike (patterns are per row)."""
    model, tok = llada
    rows = [_document(tok, 24, 8, seed=2), _document(tok, 16, 8, seed=3)]
    config = _config(density=0.5, full_steps=1)
    single = [_run(model, tok, config, r, r.shape[1] - 8) for r in rows]
    ids = torch.full((2, 32), tok.pad_token_id)
    mask = torch.zeros(2, 32, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.shape[1]], mask[i, : r.shape[1]] = r[0], 1
    tokens, logits, computed = _run(model, tok, config, ids, torch.tensor([24, 16]), attention_mask=mask)
    assert set(computed.values()) == {1}
    for i, (r_tokens, r_logits, _) in enumerate(single):
        n = rows[i].shape[1]
        assert torch.equal(tokens[i, :n], r_tokens[0])
        for step, (a, b) in enumerate(zip(logits, r_logits, strict=True)):
            torch.testing.assert_close(a[i, :n], b[0], atol=2e-5, rtol=0, msg=f"row {i}, step {step}")


@pytest.mark.parametrize("original", ["sdpa", "eager"])
def test_disable_restores_the_original_implementation(original):
    model, tok = fixtures.tiny_llada2()
    model.set_attn_implementation(original)
    ids = _document(tok, 24, 16)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding reaches eager as an additive mask, sdpa as a bool one
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        handle = unbottle.enable_sparse_attention(model, _config(density=0.4, full_steps=1))
        with pytest.raises(RuntimeError, match="already enabled"):
            unbottle.enable_sparse_attention(model, _config())
        assert torch.equal(model(ids, attention_mask=mask).logits, reference)  # step 0: the original, exactly
        sparse = model(ids, attention_mask=mask).logits  # step 1: sparse
        assert (sparse - reference).abs().max() > 1e-3 and torch.isfinite(sparse).all()
        assert set(handle.pattern_computations.values()) == {1}
        handle.disable()
        assert model.config._attn_implementation_internal == original
        assert torch.equal(model(ids, attention_mask=mask).logits, reference)
    unbottle.disable_sparse_attention(model)  # a second disable is a no-op
    notify_dlm_step(model, 0, 4)  # so are notifications without sparse attention


def test_forwards_count_as_steps_and_new_prompts_start_generations(llada):
    """Without notifications each forward is a step; with the mask token known (here from the config), another
    prompt starts a new generation by itself."""
    model, tok = llada
    model.config.mask_token_id = tok.mask_token_id
    try:
        handle = unbottle.enable_sparse_attention(model, _config(density=0.4, full_steps=1))
        for seed in (4, 5):
            ids = _document(tok, 24, 4, seed=seed)
            _greedy(model, ids, tok.mask_token_id, notify=False)
            assert handle.state.step == 3
        assert set(handle.pattern_computations.values()) == {2} and handle.state.generations == 1
    finally:
        unbottle.disable_sparse_attention(model)
        del model.config.mask_token_id


def test_llada2_pipeline_with_the_step_callback():
    """The stock LLaDA2Pipeline with `dlm_step_callback`: steps and their total come from the pipeline, each call is
    one generation (spotted by its first, shorter block window), and each window gets its pattern once."""
    pipe = fixtures.tiny_llada2_pipeline()
    handle = unbottle.enable_sparse_attention(pipe, _config(block_size=4, density=0.5, full_steps=1))
    assert handle.model is pipe.model
    steps = []
    callback = dlm_step_callback(pipe.model)

    def spy(pipe_, step, timestep, kwargs):
        steps.append((step, handle.state.step))  # the step that just ran, as the model's clock saw it
        return callback(pipe_, step, timestep, kwargs)

    try:
        kwargs = dict(gen_length=8, num_inference_steps=4, output_type="seq", eos_early_stop=False, threshold=1.5,
                      sampling_method="greedy", callback_on_step_end=spy)  # fmt: skip
        first = pipe(prompt="a red circle", **kwargs).sequences
        after_first = handle.pattern_computations
        assert handle.state.generation.total_steps == pipe.num_timesteps and len(steps) > 4
        assert all(pipeline == clock for pipeline, clock in steps)
        windows = {n for (_, n, _) in handle.state.layers["model.layers.0.self_attn"].patterns}
        assert len(windows) > 1 and set(after_first.values()) == {len(windows)}  # one pattern per window
        steps.clear()
        second = pipe(prompt="a red circle", **kwargs).sequences
        assert handle.state.generations == 1 and steps[0] == (0, 0)
        assert all(pipeline == clock for pipeline, clock in steps)
        assert {k: 2 * v for k, v in after_first.items()} == handle.pattern_computations
        assert torch.equal(first, second) and first.shape == (1, 8) and not (first == pipe.mask_token_id).any()
    finally:
        unbottle.disable_sparse_attention(pipe)
    assert pipe.model.config._attn_implementation == "sdpa"


def test_diffusion_gemma_runs_sparse_and_restores_every_config():
    pipe = fixtures.tiny_diffusion_gemma_pipeline()
    text_config = pipe.model.config.get_text_config()
    handle = unbottle.enable_sparse_attention(pipe.model, _config(block_size=2, density=0.5))
    assert text_config._attn_implementation == "unbottle_sparse"
    out = pipe(prompt="a red circle", gen_length=8, num_inference_steps=2, output_type="seq",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.sequences.shape == (1, 8)
    # the decoder's canvas queries attend sparsely over the context keys (queries end-aligned with the keys)
    assert any(name.startswith("model.decoder.") for name in handle.pattern_computations)
    unbottle.disable_sparse_attention(pipe)
    assert pipe.model.config._attn_implementation == text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "kwargs, field",
    [({"density": 0.0}, "density"), ({"density": 1.5}, "density"), ({"block_size": 0}, "block_size"),
     ({"pattern": "random"}, "pattern"), ({"full_steps": 1.5}, "full_steps"), ({"full_steps": -1}, "full_steps"),
     ({"refresh_every": -1}, "refresh_every")],
)  # fmt: skip
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SparseAttentionConfig\.{field}"):
        unbottle.SparseAttentionConfig(**kwargs)


def test_bad_notifications_and_unsupported_models(llada):
    model, tok = llada
    unbottle.enable_sparse_attention(model, _config())
    try:
        with pytest.raises(ValueError, match="step"):
            notify_dlm_step(model, -1, 4)
        with pytest.raises(ValueError, match="gen_length"):
            notify_dlm_generation_start(model, 4, gen_length=2.5)
    finally:
        unbottle.disable_sparse_attention(model)
    with pytest.raises(TypeError, match="SparseAttentionConfig"):
        unbottle.enable_sparse_attention(model, {"density": 0.3})


def test_retrieval_accuracy_on_the_shapes_dlm(capsys):
    """The shipped retrieval DLM at 30% of 64-token blocks (SparseD, 20% dense steps) answers about as well as dense
    on 1,024-token documents: a wrong pattern (e.g. missing the queried record's block) would not."""
    from unbottle.shapes import retrieval

    pipe = unbottle.shapes.load_pipeline("dlm")
    model, tok = pipe.model, pipe.tokenizer
    examples = [retrieval.make_example(random.Random(10_000 + i), 1024) for i in range(4)]
    ids, answer = retrieval.encode(tok, examples)
    prompt_length = answer.float().argmax(1).long()  # (B,) first answer position per row
    steps = int(answer.sum(1).max())

    def accuracy(config):
        handle = unbottle.enable_sparse_attention(model, config) if config else None
        try:
            notify_dlm_generation_start(model, prompt_length, steps, total_steps=steps)
            out, _ = retrieval.decode(model, ids, answer, tok.mask_token_id)  # forwards count as steps
            computed = handle.pattern_computations if handle else {}
        finally:
            unbottle.disable_sparse_attention(model)
        right = [retrieval.score(tok.decode(out[i][answer[i]]), a) for i, (_, a) in enumerate(examples)]
        return sum(right) / len(right), computed

    dense, _ = accuracy(None)
    sparse, computed = accuracy(unbottle.SparseAttentionConfig(density=0.3, block_size=64, reshape=False))
    with capsys.disabled():
        print(f"\nshapes DLM retrieval, {len(examples)} × 1,024 tokens: dense {dense:.2f}, SparseD 30% {sparse:.2f}")
    assert set(computed.values()) == {1} and len(computed) == model.config.num_hidden_layers
    assert dense >= 0.75
    assert sparse >= dense / 2

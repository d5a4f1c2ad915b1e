"""EasyAnimate V5.1 text-to-video (EasyAnimatePipeline, Qwen2-VL text) through unbottle's pipeline features: the noise
is the grid the pipeline draws, sparse attention is stock at density 1 and with every block kept, one-stage
bottleneck sampling is the stock call, a two-stage plan runs the denoiser at the smaller then the full size, and
noise search differentiates the stock call."""

import numpy as np
import pytest
import torch
from pipeline_checks import max_diff, seed

import unbottle
from unbottle.families import family_for_pipeline
from unbottle.families.prompt import encode_prompt_once
from unbottle.pipelines import noise_search
from unbottle.testing.easyanimate import tiny_easyanimate_pipeline

PROMPT = "a red circle left of a blue square"
# 32×32×5 → latents (1, 4, 2, 4, 4): 8 video tokens of 2×2 patches after 256 text tokens; CFG on (batched cond and
# uncond rows). The pipeline needs a negative prompt whenever it encodes negatives (it iterates over it).
CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, negative_prompt="a green cube")
DENSE = unbottle.SparseAttentionConfig(density=1.0, block_size=4, full_steps=1)
ALL_KEPT = unbottle.SparseAttentionConfig(density=0.9999, block_size=4, full_steps=0, reshape=False)
LAYERS = {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}


@pytest.fixture(scope="module")
def pipe():
    return tiny_easyanimate_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    """The stock output (np) for seed 0 and CALL, before any feature touched the pipeline."""
    return run(pipe)


@pytest.fixture(autouse=True)
def _always_disable(pipe):
    yield
    unbottle.disable_sparse_attention(pipe)


def run(pipe, s=0, **kwargs):
    return pipe(PROMPT, generator=seed(s), output_type="np", **{**CALL, **kwargs}).frames


def without_steps(call):
    return {k: v for k, v in call.items() if k != "num_inference_steps"}


def denoiser_inputs(pipe):
    """A forward pre-hook recording (timestep, hidden_states) of every transformer call; `remove()` when done."""
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append((float(a[1].flatten()[0]), a[0].clone())), with_kwargs=True
    )
    return calls, hook


def processors(pipe):
    return {name: m.processor for name, m in pipe.transformer.named_modules() if hasattr(m, "processor")}


# -- the family record ----------------------------------------------------------------------------------------------
def test_the_noise_is_the_grid_the_pipeline_draws(pipe):
    family = family_for_pipeline(pipe, "bottleneck")
    assert family.name == "EasyAnimate" and family.supports("noise") and family.stock_steps == 50
    noise, _ = noise_search.draw_noise(pipe, family, CALL, 5, torch.float32)
    assert noise.shape == (1, 4, 2, 4, 4)  # (B, C, 1 + (5 − 1)/4, 32/8, 32/8)
    calls, hook = denoiser_inputs(pipe)
    try:
        run(pipe, 5, num_inference_steps=1)
    finally:
        hook.remove()
    (t, first), = calls
    assert t == 1000.0 and first.shape == (2, 4, 2, 4, 4)  # CFG: uncond and cond rows of the same noise
    torch.testing.assert_close(first, noise.expand(2, -1, -1, -1, -1), atol=0, rtol=0)
    assert family.latents.size(pipe, {}) == (512, 512)  # the pipeline's own defaults: 512 × 512, 49 frames
    assert family.latents.noise_shape(pipe, {}) == (1, 4, 13, 64, 64)


def test_the_encoding_maps_every_tensor_to_its_call_keyword(pipe):
    family = family_for_pipeline(pipe, "bottleneck")
    embeds = encode_prompt_once(pipe, family.prompt, dict(prompt=PROMPT, negative_prompt="a green cube"),
                                always_negative=False)  # fmt: skip
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask",
                           "negative_prompt_attention_mask"}  # fmt: skip
    assert embeds["prompt_embeds"].shape == (1, 256, 16) and embeds["prompt_attention_mask"].shape == (1, 256)
    # the masks cover the rendered conversation: the same turns around an 8-word prompt and a 3-word negative
    for text, key in ((PROMPT, "prompt_attention_mask"), ("a green cube", "negative_prompt_attention_mask")):
        chat = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        ids = pipe.tokenizer(pipe.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        assert int(embeds[key].sum()) == len(ids.input_ids) and embeds[key][0, : len(ids.input_ids)].all()
    assert int(embeds["prompt_attention_mask"].sum() - embeds["negative_prompt_attention_mask"].sum()) == 8 - 3


# -- sparse attention -------------------------------------------------------------------------------------------------
def test_density_one_is_stock_and_disable_restores_the_processors(pipe, stock):
    originals = processors(pipe)
    handle = unbottle.enable_sparse_attention(pipe, DENSE)
    assert {k for k, p in processors(pipe).items() if isinstance(p, unbottle.SparseAttnProcessor)} == LAYERS
    out = run(pipe)
    unbottle.disable_sparse_attention(pipe)
    assert handle.pattern_computations == {} and max_diff(out, stock) <= 1e-5
    after = processors(pipe)
    assert after.keys() == originals.keys() and all(after[k] is p for k, p in originals.items())
    np.testing.assert_array_equal(run(pipe), stock)


def test_every_block_kept_runs_the_sparse_path_and_matches_stock(pipe, stock):
    handle = unbottle.enable_sparse_attention(pipe, ALL_KEPT)
    out = run(pipe)
    assert handle.pattern_computations == dict.fromkeys(LAYERS, 1)
    assert max_diff(out, stock) <= 1e-5


# -- bottleneck sampling ----------------------------------------------------------------------------------------------
def test_one_stage_bottleneck_is_the_stock_call(pipe, stock):
    stage = unbottle.Stage(scale=1.0, steps=CALL["num_inference_steps"], strength=1.0, shift=None)
    out = unbottle.BottleneckSampler(pipe, [stage])(PROMPT, generator=seed(), output_type="np",
                                                    **without_steps(CALL)).frames  # fmt: skip
    np.testing.assert_array_equal(out, stock)


def test_two_stages_run_the_denoiser_small_then_full(pipe):
    stages = [unbottle.Stage(scale=0.5, steps=2, strength=1.0, shift=3.0),
              unbottle.Stage(scale=1.0, steps=2, strength=0.8, shift=3.0)]  # fmt: skip
    calls, hook = denoiser_inputs(pipe)
    try:
        out = unbottle.BottleneckSampler(pipe, stages)(
            PROMPT, generator=seed(), output_type="np", **without_steps(CALL)
        ).frames
    finally:
        hook.remove()
    assert [tuple(x.shape) for _, x in calls] == [(2, 4, 2, 2, 2)] * 2 + [(2, 4, 2, 4, 4)] * 2  # 16 px, then 32 px
    assert calls[0][0] == pytest.approx(1000.0) and calls[2][0] == pytest.approx(800.0)  # σ = 1, then the strength
    assert out.shape == (1, 5, 32, 32, 3) and np.isfinite(out).all()


# -- noise search -----------------------------------------------------------------------------------------------------
class Red(torch.nn.Module):
    """Mean of the red channel: a differentiable reward in [0, 1]."""

    def forward(self, images, prompts):
        return images[:, 0].mean((-2, -1))

    def unit(self, scores):
        return scores


def test_the_differentiable_call_with_the_drawn_noise_is_the_stock_call(pipe):
    expected = pipe(PROMPT, generator=seed(3), output_type="pt", **CALL).frames
    noise, state = noise_search.draw_noise(pipe, family_for_pipeline(pipe, "noise"), CALL, 3, torch.float32)
    generator = torch.Generator()
    generator.set_state(state)
    eps = noise.clone().requires_grad_(True)
    video = noise_search.differentiable_call(pipe, PROMPT, latents=eps, generator=generator, output_type="pt",
                                             **CALL).frames  # fmt: skip
    assert video.requires_grad and video.shape == expected.shape == (1, 5, 3, 32, 32)
    torch.testing.assert_close(video.detach(), expected, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(video[:, :, 0].mean(), eps)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_one_noise_search_step_moves_the_loss(pipe):
    call = dict(CALL, num_frames=1)  # one latent frame
    stock_video = pipe(PROMPT, generator=seed(4), output_type="pt", **call).frames
    search = unbottle.NoiseSearch(pipe, {"red": (Red(), 10.0)}, seeds=[4], iterations=2, progress=False)
    result = search(PROMPT, output_type="pt", **call)
    first, second = result.history[4]
    assert first.scores["red"] == pytest.approx(float(stock_video[:, :, 0].mean()), abs=1e-5)  # the stock noise
    assert first.grad_norms and all(np.isfinite(v) and v > 0 for v in first.grad_norms.values())
    assert second.loss != first.loss
    assert result.latents.shape == (1, 4, 1, 4, 4)

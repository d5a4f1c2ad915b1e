"""NoiseSearch (CARINOX / ReNO) on tiny stock pipelines and the shapes model: the differentiable `__wrapped__` call
equals the stock call, seed s starts from the stock noise of seed s, exploration picks the argmax on any pipeline,
optimization follows CARINOX's update exactly (per-reward clip, sum, re-clip, SGD Nesterov, best iterate), the
regularizer matches its formula, bad settings are refused by name, and the CLI's --explore/--optimize work."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

import unbottle
import unbottle.shapes
from unbottle.cli import main
from unbottle.families import family_for_pipeline
from unbottle.pipelines import noise_search
from unbottle.pipelines.noise_regularizer import chi_regularizer
from unbottle.pipelines.noise_search import (
    NoiseSearchConfig,
    NoiseSearchConfigError,
    _clip,
    differentiable_call,
    draw_noise,
)
from unbottle.testing import (
    tiny_cogvideox_pipeline,
    tiny_flux_pipeline,
    tiny_ltx_pipeline,
    tiny_pixart_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
    tiny_stable_diffusion_pipeline,
    tiny_wan_pipeline,
)

PROMPT = "a red circle to the left of a blue square"


def noise_family(pipe):
    """The pipeline's family for noise search, None when it has none."""
    return family_for_pipeline(pipe, "noise", required=False)


class Channel(torch.nn.Module):
    """Mean of one colour channel: a simple differentiable reward, already in [0, 1]."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        self.channel, self.calls = channel, 0

    def forward(self, images, prompts):
        self.calls += 1
        return images[:, self.channel].mean((-2, -1))  # (B,)

    def unit(self, scores):
        return scores


class Worsening(Channel):
    """Channel mean minus 0.1 per call: every later iterate scores worse, whatever the step does."""

    def forward(self, images, prompts):
        return super().forward(images, prompts) - 0.1 * self.calls


def _sd_turbo():  # SD-Turbo's setup: Euler, trailing spacing, one step, no CFG
    pipe = tiny_stable_diffusion_pipeline()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe


def _sdxl_turbo():  # SDXL-Turbo in CARINOX: Euler ancestral, trailing (its step draws from the generator)
    pipe = tiny_sdxl_pipeline()
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe


def _pixart_dmd():  # PixArt-α DMD: DDPM, one step at timestep 400
    pipe = tiny_pixart_pipeline()
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return pipe


def _shapes():
    return unbottle.shapes.load_pipeline("t2i")


FIXTURES = {"sd": _sd_turbo, "sdxl": _sdxl_turbo, "pixart": _pixart_dmd, "flux": tiny_flux_pipeline,
            "sd3": tiny_sd3_pipeline, "wan": tiny_wan_pipeline, "shapes": _shapes}  # fmt: skip
CALL = {
    "sd": dict(num_inference_steps=1, guidance_scale=0.0, height=32, width=32),
    "sdxl": dict(num_inference_steps=1, guidance_scale=0.0, height=32, width=32),
    "pixart": dict(timesteps=[400], guidance_scale=1.0, height=32, width=32, use_resolution_binning=False),
    "flux": dict(num_inference_steps=1, height=32, width=32, max_sequence_length=16),  # schnell: packed latents
    "sd3": dict(num_inference_steps=1, guidance_scale=0.0, height=16, width=16, max_sequence_length=16),
    "wan": dict(num_inference_steps=2, guidance_scale=4.0, height=32, width=32, num_frames=1, max_sequence_length=16),
    "shapes": dict(num_inference_steps=2, guidance_scale=4.0, height=128, width=128, num_frames=1),
}
_BUILT: dict = {}


@pytest.fixture(scope="module")
def pipes():
    def get(name):
        if name not in _BUILT:
            _BUILT[name] = FIXTURES[name]()
            _BUILT[name].set_progress_bar_config(disable=True)
        return _BUILT[name]

    yield get
    _BUILT.clear()


def seed(s):
    return torch.Generator().manual_seed(s)


def media(out):
    return out.frames if hasattr(out, "frames") else out.images


def stock(pipe, name, s, output_type="pt", **kwargs):
    return media(pipe(PROMPT, generator=seed(s), output_type=output_type, **{**CALL[name], **kwargs}))


def generator_from(state):
    g = torch.Generator()
    g.set_state(state)
    return g


# ---- the differentiable stock call and the stock noise ------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIXTURES))
def test_wrapped_call_with_the_drawn_noise_is_the_stock_call_and_has_gradients(pipes, name):
    pipe = pipes(name)
    family = noise_family(pipe)
    expected = stock(pipe, name, 3)
    dtype = torch.float32 if family.latents.float32_noise else pipe.dtype
    noise, state = draw_noise(pipe, family, CALL[name], 3, dtype)  # what pipe(generator=manual_seed(3)) draws
    eps = noise.clone().requires_grad_(True)
    out = differentiable_call(pipe, PROMPT, latents=eps, generator=generator_from(state), output_type="pt",
                              **CALL[name])  # fmt: skip
    image = media(out)
    assert image.requires_grad and image.shape == expected.shape
    torch.testing.assert_close(image.detach(), expected, atol=1e-4, rtol=0)  # grad-mode kernels may differ by ulps
    (grad,) = torch.autograd.grad(image[..., 0, :, :].mean(), eps)  # the red channel's mean
    assert grad.shape == eps.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_flux_noise_is_packed_and_wan_noise_is_a_video_grid(pipes):
    flux, wan = pipes("flux"), pipes("wan")
    noise, _ = draw_noise(flux, noise_family(flux), CALL["flux"], 0, torch.float32)
    channels = flux.transformer.config.in_channels
    assert noise.shape == (1, (32 // 2) * (32 // 2), channels)  # (B, h/2 · w/2, 4C): 2×2 patches of 1-px latents
    noise, _ = draw_noise(wan, noise_family(wan), dict(CALL["wan"], num_frames=5), 0, torch.float32)
    assert noise.shape == (1, 16, 2, 32 // 8, 32 // 8)  # (B, C, 1 + (5 − 1)/4, h, w)


def test_wan_noise_rounds_the_frames_as_the_pipeline_does(pipes):
    wan = pipes("wan")
    seen = []
    hook = wan.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"]), with_kwargs=True)
    call = dict(CALL["wan"], num_frames=8, num_inference_steps=1)  # not 4k + 1: WanPipeline makes it 9
    try:
        wan(PROMPT, generator=seed(3), output_type="latent", **call)
    finally:
        hook.remove()
    noise, _ = draw_noise(wan, noise_family(wan), call, 3, torch.float32)
    torch.testing.assert_close(noise, seen[0][:1].float(), atol=0, rtol=0)  # (1, 16, 3, 4, 4): the pipeline's noise


# ---- exploration ----------------------------------------------------------------------------------------------------


def test_explore_one_seed_reproduces_the_stock_call(pipes):
    pipe = pipes("sd")
    result = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, seeds=[7], iterations=0, progress=False)(
        PROMPT, output_type="np", **CALL["sd"]
    )
    np.testing.assert_array_equal(result.images, stock(pipe, "sd", 7, output_type="np"))
    assert result.seed == 7 and result.iteration == 0 and list(result.history) == [7]
    noise, _ = draw_noise(pipe, noise_family(pipe), CALL["sd"], 7, torch.float32)
    torch.testing.assert_close(result.latents, noise, atol=0, rtol=0)  # the noise the pipeline drew
    again = pipe(PROMPT, latents=result.latents, output_type="np", **CALL["sd"]).images
    np.testing.assert_array_equal(again, result.images)


def test_explore_picks_the_argmax_of_the_weighted_reward(pipes):
    pipe = pipes("sd")
    rewards = {"red": (Channel(0), 2.0), "blue": (Channel(2), 1.0)}
    search = unbottle.NoiseSearch(pipe, rewards, seeds=5, iterations=0, progress=False)
    result = search(PROMPT, output_type="pt", **CALL["sd"])
    objectives = {}
    for s in range(5):
        image = stock(pipe, "sd", s)  # (1, 3, H, W)
        objectives[s] = 2.0 * float(image[:, 0].mean()) + float(image[:, 2].mean())
        assert result.history[s][0].objective == pytest.approx(objectives[s], abs=1e-6)
    assert result.seed == max(objectives, key=objectives.get)
    assert len(set(objectives.values())) == 5  # the seeds really differ
    assert result.scores["red"] == pytest.approx(float(stock(pipe, "sd", result.seed)[:, 0].mean()), abs=1e-6)
    pil = search(PROMPT, **CALL["sd"])  # the pipeline's own default output type (PIL), scored on its 8-bit pixels
    assert isinstance(pil.images, list) and pil.images[0].size == (32, 32) and pil.seed == result.seed
    assert pil.scores["red"] == pytest.approx(result.scores["red"], abs=2e-3)


def test_explore_works_on_any_pipeline_and_averages_video_frames():
    pipe = tiny_cogvideox_pipeline()  # no noise family: exploration only
    pipe.set_progress_bar_config(disable=True)
    assert noise_family(pipe) is None
    call = dict(num_inference_steps=2, height=16, width=16, num_frames=9, max_sequence_length=16, output_type="pt")
    result = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, seeds=3, iterations=0, progress=False)(
        PROMPT, **call
    )
    means = {s: float(media(pipe(PROMPT, generator=seed(s), **call))[0, :, 0].mean()) for s in range(3)}
    assert result.seed == max(means, key=means.get) and result.latents is None
    assert result.scores["red"] == pytest.approx(means[result.seed], abs=1e-6)  # the mean over all frames
    assert result.images.shape == media(pipe(PROMPT, generator=seed(0), **call)).shape  # (B, F, 3, H, W)
    with pytest.raises(ValueError, match="iterations=0 .* works with any pipeline"):
        unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, iterations=2)


# ---- optimization ---------------------------------------------------------------------------------------------------


def test_one_step_increases_the_reward_and_the_best_iterate_is_returned(pipes):
    pipe = pipes("sd")
    result = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[1], iterations=3, progress=False)(
        PROMPT, output_type="pt", **CALL["sd"]
    )
    losses = [step.loss for step in result.history[1]]
    assert losses[0] > losses[1] > losses[2]  # the red channel gets brighter at each step
    assert result.iteration == 2 and result.scores["red"] == pytest.approx(1 - losses[2], abs=1e-6)
    torch.testing.assert_close(media(result.output)[:, 0].mean(), torch.tensor(result.scores["red"]), atol=1e-5,
                               rtol=0)  # fmt: skip
    first = stock(pipe, "sd", 1)
    assert float(first[:, 0].mean()) == pytest.approx(1 - losses[0], abs=1e-5)  # iteration 0 = the stock image


def test_the_real_shapes_reward_increases_after_one_step(pipes):
    pipe = pipes("sd")
    reward = unbottle.load_reward(unbottle.rewards.DEFAULT)
    search = unbottle.NoiseSearch(pipe, seeds=[2], iterations=2, progress=False)  # rewards=None: DEFAULT
    result = search(PROMPT, output_type="pt", **CALL["sd"])
    assert list(result.scores) == [unbottle.rewards.DEFAULT]
    before, after = result.history[2]
    assert after.scores[unbottle.rewards.DEFAULT] > before.scores[unbottle.rewards.DEFAULT]
    assert before.grad_norms and after.grad_norms == {}  # the last iterate is evaluated, not differentiated
    image = media(result.output)
    assert float(reward(image, PROMPT)) == pytest.approx(result.scores[unbottle.rewards.DEFAULT], abs=1e-4)


def test_a_worse_last_iterate_is_not_returned(pipes):
    pipe = pipes("sd")
    search = unbottle.NoiseSearch(pipe, {"red": (Worsening(0), 1.0)}, seeds=[4], iterations=3, progress=False)
    result = search(PROMPT, output_type="np", **CALL["sd"])
    losses = [step.loss for step in result.history[4]]
    assert losses[0] < losses[1] < losses[2] and result.iteration == 0 and result.loss == losses[0]
    np.testing.assert_array_equal(result.images, stock(pipe, "sd", 4, output_type="np"))  # the initial noise's
    noise, _ = draw_noise(pipe, noise_family(pipe), CALL["sd"], 4, torch.float32)
    torch.testing.assert_close(result.latents, noise, atol=0, rtol=0)


def test_across_seeds_the_lowest_loss_wins(pipes):
    pipe = pipes("sd")
    result = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[0, 1, 2], iterations=2, progress=False)(
        PROMPT, **CALL["sd"]
    )
    best = {s: min(step.loss for step in steps) for s, steps in result.history.items()}
    assert result.seed == min(best, key=best.get) and result.loss == best[result.seed]


def _carinox_first_step(pipe, name, s, rewards, cfg):
    """CARINOX's loop, literally: per reward loss_i.backward(retain_graph) → clip_grad_norm_ → sum → clip → SGD."""
    noise, state = draw_noise(pipe, noise_family(pipe), CALL[name], s, torch.float32)
    eps = torch.nn.Parameter(noise.clone())
    optimizer = torch.optim.SGD([eps], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    image = media(differentiable_call(pipe, PROMPT, latents=eps, generator=generator_from(state), output_type="pt",
                                      **CALL[name]))  # fmt: skip
    d = eps.numel()
    reg = cfg.reg_weight * (0.5 * eps.norm() ** 2 - (d - 1) * torch.log(eps.norm()))
    grads = []
    for reward, weight in rewards.values():
        loss = weight * (1 - reward.unit(reward(image, [PROMPT]))).mean() + reg
        loss.backward(retain_graph=True)
        torch.nn.utils.clip_grad_norm_([eps], cfg.grad_clip)
        grads.append(eps.grad.clone())
        eps.grad = None
    eps.grad = torch.stack(grads).sum(0)
    torch.nn.utils.clip_grad_norm_([eps], cfg.grad_clip)
    optimizer.step()
    return noise, eps.detach()


@pytest.mark.parametrize("name, options", [("sd", {}), ("flux", {"batched_vjp": True}),
                                           ("sd", {"gradient_checkpointing": True, "reg_weight": 1.0})])  # fmt: skip
def test_the_update_is_carinox_and_every_clipped_gradient_is_bounded(pipes, name, options):
    pipe = pipes(name)
    rewards = {"red": (Channel(0), 50.0), "green": (Channel(1), 50.0)}  # λ large: both gradients get clipped
    search = unbottle.NoiseSearch(pipe, rewards, seeds=[5], iterations=2, progress=False, **options)
    result = search(PROMPT, output_type="pt", **CALL[name])
    first = result.history[5][0]
    tau = search.config.grad_clip
    assert all(norm > tau for norm in first.grad_norms.values())  # pre-clip norms: clipping was active
    assert first.update_norm <= tau * (1 + 1e-5)  # Σ_i clip(g_i) has norm ≤ 2τ, clipped again to τ
    noise, expected = _carinox_first_step(pipe, name, 5, rewards, search.config)
    assert result.iteration == 1  # so result.latents is ε after the first step
    torch.testing.assert_close(result.latents, expected, atol=1e-6, rtol=1e-5)
    step = (result.latents - noise).norm()  # first Nesterov step: lr · (1 + momentum) · update
    cfg = search.config
    assert float(step) == pytest.approx(cfg.lr * (1 + cfg.momentum) * first.update_norm, rel=1e-4)
    assert float(step) <= cfg.lr * (1 + cfg.momentum) * tau * (1 + 1e-5)
    params = [p for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()]
    assert all(p.requires_grad for p in params)  # frozen for the search only (diffusers builds them trainable)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    assert not denoiser.is_gradient_checkpointing


def test_compiled_search_takes_the_same_step_and_restores_the_modules(pipes, monkeypatch):
    """compile=True: the same first CARINOX update as eager (dynamo + AOTAutograd here), modules restored after."""
    monkeypatch.setattr(noise_search, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    torch._dynamo.reset()
    pipe = pipes("sd")
    rewards = {"red": (Channel(0), 50.0), "green": (Channel(1), 50.0)}
    compiled = []
    original = torch.nn.Module.compile

    def spy(module, *args, **kwargs):
        compiled.append(module)
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    search = unbottle.NoiseSearch(pipe, rewards, seeds=[5], iterations=2, progress=False, compile=True)
    result = search(PROMPT, output_type="pt", **CALL["sd"])
    assert compiled == [pipe.unet, pipe.vae.decoder]
    assert all(m._compiled_call_impl is None for m in compiled)  # restored: the stock modules run eagerly again
    _, expected = _carinox_first_step(pipe, "sd", 5, rewards, search.config)
    torch.testing.assert_close(result.latents, expected, atol=1e-6, rtol=1e-5)
    torch._dynamo.reset()


def test_clip_bounds_the_norm_like_clip_grad_norm():
    g = torch.randn(4, 8, 8) * 3
    clipped, norm = _clip(g, 0.1)
    assert float(norm) == pytest.approx(float(g.norm()), rel=1e-6) and float(clipped.norm()) <= 0.1 * (1 + 1e-6)
    reference = g.clone().requires_grad_(True)
    reference.grad = g.clone()
    torch.nn.utils.clip_grad_norm_([reference], 0.1)
    torch.testing.assert_close(clipped, reference.grad)
    small = g * 1e-4
    assert torch.equal(_clip(small, 0.1)[0], small)  # below τ: untouched


def test_half_precision_pipeline_keeps_a_float32_noise():
    pipe = tiny_stable_diffusion_pipeline(dtype=torch.bfloat16)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    result = unbottle.NoiseSearch(pipe, {"red": (Channel(0), 50.0)}, seeds=[1], iterations=2, progress=False)(
        PROMPT, output_type="np", **CALL["sd"]
    )
    assert result.latents.dtype == torch.bfloat16  # the pipeline's latents= format
    assert all(math.isfinite(step.reg) for step in result.history[1])
    assert result.history[1][1].loss < result.history[1][0].loss
    assert result.history[1][0].loss == pytest.approx(1 - float(stock(pipe, "sd", 1)[:, 0].float().mean()), abs=1e-2)


def test_a_wrapped_encode_prompt_sees_every_call(pipes):
    pipe = pipes("sd")
    calls = []
    original = pipe.encode_prompt

    def encode_prompt(*args, **kwargs):  # what structured guidance does: an instance attribute around the method
        calls.append(kwargs.get("prompt", args[0] if args else None))
        return original(*args, **kwargs)

    pipe.encode_prompt = encode_prompt
    try:
        unbottle.NoiseSearch(pipe, {"red": (Channel(0), 1.0)}, seeds=[0], iterations=3, progress=False)(
            PROMPT, **CALL["sd"]
        )
    finally:
        del pipe.encode_prompt
    assert calls.count(PROMPT) >= 1 + 3 + 1  # once to learn the dtype, once per iteration, once for the output


# ---- the regularizer ------------------------------------------------------------------------------------------------


def test_regularizer_matches_the_formula_in_float64():
    noise = torch.randn(2, 4, 16, 16, generator=seed(0)) * torch.tensor([1.0, 1.3]).view(2, 1, 1, 1)
    flat = noise.double().flatten(1)
    d = flat.shape[1]
    expected = 0.01 * (0.5 * (flat**2).sum(1) - (d - 1) * torch.log(flat.norm(dim=1)))
    got = chi_regularizer(noise, 0.01)
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    big = torch.randn(1, 4, 128, 128, generator=seed(1)).half()  # 0.5‖ε‖² ≈ 32768: near fp16's range; fp32 inside
    expected = 0.01 * (0.5 * big.double().square().sum() - (big.numel() - 1) * torch.log(big.double().norm()))
    torch.testing.assert_close(chi_regularizer(big, 0.01).double(), expected.view(1), rtol=1e-6, atol=1e-3)
    # its minimum is at ‖ε‖ = √(d − 1): the gradient vanishes there
    eps = noise[:1] / noise[:1].norm() * math.sqrt(noise[0].numel() - 1)
    eps.requires_grad_(True)
    (grad,) = torch.autograd.grad(chi_regularizer(eps, 1.0).sum(), eps)
    assert float(grad.norm()) < 1e-3


# ---- refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("seeds", 0), ("seeds", [1, 1]), ("seeds", [-1]), ("seeds", "4"), ("iterations", -1), ("iterations", 2.5),
     ("lr", 0.0), ("lr", math.nan), ("lr", math.inf), ("momentum", 1.0), ("momentum", -0.1), ("grad_clip", 0.0),
     ("reg_weight", -0.01), ("nesterov", "yes"), ("gradient_checkpointing", 1), ("batched_vjp", None)],
)  # fmt: skip
def test_config_errors_name_the_field_and_the_value(field, value):
    with pytest.raises(NoiseSearchConfigError) as e:
        NoiseSearchConfig(**{field: value})
    assert e.value.field == field and f"NoiseSearchConfig.{field}" in str(e.value) and repr(value) in str(e.value)
    with pytest.raises(ValueError, match=re.escape(f"NoiseSearchConfig.{field}")):
        unbottle.NoiseSearch(object(), {"r": (Channel(), 1.0)}, **{field: value})  # checked before anything


def test_config_defaults_are_carinox():
    cfg = NoiseSearchConfig()
    assert (cfg.iterations, cfg.lr, cfg.momentum, cfg.nesterov, cfg.grad_clip, cfg.reg_weight) == (
        50, 5.0, 0.9, True, 0.1, 0.01)  # fmt: skip
    assert cfg.seeds == (0,) and NoiseSearchConfig(seeds=3).seeds == (0, 1, 2)
    with pytest.raises(NoiseSearchConfigError, match="nesterov"):
        NoiseSearchConfig(momentum=0.0)
    assert NoiseSearchConfig(momentum=0.0, nesterov=False).momentum == 0.0


def test_bad_rewards_and_call_arguments_are_refused(pipes):
    pipe = pipes("sd")
    with pytest.raises(ValueError, match=r"rewards\['red'\] must have a finite weight > 0"):
        unbottle.NoiseSearch(pipe, {"red": (Channel(), -1.0)})
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        unbottle.NoiseSearch(pipe, {"nope": 1.0})
    search = unbottle.NoiseSearch(pipe, Channel(), iterations=0, progress=False)  # a bare Reward: weight 1
    assert list(search.rewards) == ["Channel"]
    with pytest.raises(TypeError, match="generator"):
        search(PROMPT, generator=seed(0))
    with pytest.raises(TypeError, match="latents"):
        search(PROMPT, latents=torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        search(PROMPT, num_images_per_prompt=2)
    with pytest.raises(ValueError, match="one non-empty string"):
        search([PROMPT, PROMPT])


# ---- the command line -----------------------------------------------------------------------------------------------


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path))


def _chosen_seed(err: str) -> int:
    return int(re.search(r"noise search: seed (\d+)", err).group(1))


def test_cli_explore_picks_among_the_seeds_and_is_deterministic(tmp_path, capsys):
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    assert main(["image", PROMPT, "--explore", "2", "--seed", "3", "--steps", "4", "-o", str(a), "-q"]) == 0
    first = capsys.readouterr().err
    assert main(["image", PROMPT, "--explore", "2", "--seed", "3", "--steps", "4", "-o", str(b), "-q"]) == 0
    second = capsys.readouterr().err
    chosen = _chosen_seed(first)
    assert chosen in (3, 4) and _chosen_seed(second) == chosen and "best of seeds 3–4" in first
    assert f"{unbottle.rewards.DEFAULT} " in first  # its score is printed
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    assert main(["image", PROMPT, "--seed", str(chosen), "--steps", "4", "-o", str(c), "-q"]) == 0
    np.testing.assert_array_equal(_pixels(a), _pixels(c))  # the chosen seed's own image


def test_cli_optimize_on_a_one_step_pipeline(tmp_path, capsys, monkeypatch):
    import unbottle.cli.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: _sd_turbo())
    out = tmp_path / "o.png"
    args = ["image", PROMPT, "--model", "tiny", "--optimize", "2", "--rewards", "shapes-clip:2", "--steps", "1",
            "--guidance-scale", "0", "--height", "32", "--width", "32", "-o", str(out), "-q"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 seed × 2 iterations, rewards shapes-clip × 2" in err and "seed 0, 2 iterations" in err
    assert _pixels(out).shape == (32, 32, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["video", PROMPT, "--optimize", "2"], "--optimize: "),
        (["image", PROMPT, "--explore", "2", "--bottleneck", "wan-2x"], "--explore and --bottleneck"),
        (["image", PROMPT, "--rewards", "nope:1"], "--rewards: "),
        (["image", PROMPT, "--rewards", "shapes-clip:abc"], "--rewards: "),
        (["image", PROMPT, "--explore", "2", "--seed", str(2**63 - 1)], "--seed/--explore: "),
    ],
)
def test_cli_noise_errors_name_the_flag(argv, message, tmp_path, capsys):
    out = tmp_path / ("x.mp4" if argv[0] == "video" else "x.png")
    assert main([*argv, "-o", str(out), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_optimize_on_a_pipeline_without_noise_family(tmp_path, capsys, monkeypatch):
    import unbottle.cli.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: tiny_ltx_pipeline())
    assert main(["image", PROMPT, "--model", "tiny", "--optimize", "2", "-o", str(tmp_path / "x.png"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--optimize: " in err and "LTXPipeline" in err and "Flux (FluxPipeline)" in err

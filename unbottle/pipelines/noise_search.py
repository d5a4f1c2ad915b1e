"""`NoiseSearch`: reward-guided initial-noise exploration and optimization (CARINOX, Kasaei et al. 2025; ReNO, 2024).

    search = unbottle.NoiseSearch(pipe, rewards={"hps": 5.0, "imagereward": 5.0}, seeds=4, iterations=50, lr=5.0)
    result = search("a red cube on a blue sphere", num_inference_steps=1, guidance_scale=0.0)
    result.images, result.scores, result.seed, result.latents, result.history

Exploration wraps optimization, as in CARINOX's code: for each seed s (a CPU `torch.Generator().manual_seed(s)`, so
seed s starts from exactly the noise of `pipe(prompt, generator=torch.Generator().manual_seed(s))`) the noise ε is
optimized for `iterations` steps; across seeds the result with the lowest loss is kept. One iteration:

1. the image I = G(ε) from the stock pipeline's own `__call__` with autograd on (below), ε cast to the pipeline's
   latent dtype at the call and kept as a float32 parameter;
2. per reward i, with r~_i = reward_i.unit(reward_i(I, prompt)) (videos: mean over frames):
   loss_i = λ_i·(1 − r~_i) + reg(ε), reg = γ·(0.5‖ε‖² − (d−1)·log‖ε‖) in float32 (`noise_regularizer`);
3. g_i = ∇_ε loss_i clipped to norm τ (λ_i applied before clipping, as in the code); g = Σ_i g_i, clipped to τ
   again; an SGD step with Nesterov momentum on g. No step follows the last iteration, so its gradient is not
   computed: the last iterate is only generated and scored (with the stock, no-grad call);
4. the iterate with the lowest unweighted Σ_i (1 − r~_i) is the seed's result; the chosen noise is generated once
   more by the stock `pipe(...)` in the caller's `output_type` (the result's `output`).

Per-reward gradients without per-reward generator passes: the generator runs forward once; each reward's gradient
∂loss_i/∂I is taken at a detached copy of the image (the reward's graph is freed at once), then pulled back through
generator + VAE with one vector-Jacobian product per reward, `torch.autograd.grad(I, ε, ∂loss_i/∂I)`, keeping the
generator's graph (`retain_graph`) for all but the last; the regularizer's gradient is added analytically in float32.
This is CARINOX's "one backward per reward" with neither the generator forward nor the rewards repeated.
`batched_vjp=True` does all pullbacks in one `torch.autograd.grad(..., is_grads_batched=True)` (vmap over the
backward): same numbers, more memory, sometimes faster on GPUs. A step's scores, norms and clipping stay on the
device and reach the host in one transfer at its end, so the GPU never waits on Python between the passes; with
`compile=True` the denoiser and the VAE decoder run through `torch.compile` for the search (a one-step generator's
iteration is otherwise thousands of small kernel launches; the first iterations pay for the compilation).
Under diffusers' context parallelism (the denoiser under Ulysses, `--parallel ulysses`) every rank runs the same
search; the noise gradient is summed over the ranks at each denoiser input, so every rank steps the noise one process
would (`batched_vjp=True` is refused there: the all-to-all's backward has no batching rule).

Differentiable generation through the pipeline's own code: diffusers wraps `DiffusionPipeline.__call__` in
`@torch.no_grad()`, whose decorator keeps the original function as `type(pipe).__call__.__wrapped__`. Calling it
with `latents=` the noise, the prompt encoded once (`prompt_embeds=` ..., no grad) and `output_type="pt"` runs the
stock sampling loop, scheduler and VAE decode with gradients, and gives the same image as `pipe(...)` with those
latents. Noise shapes per family (its `latents` in the family registry): SD 1.x/2.x, SDXL, PixArt-α/Σ, SD3, Flux
(packed tokens) and Wan; any other pipeline supports exploration only (`iterations=0`): best-of-N seeds by the
weighted reward Σ_i λ_i·r~_i, with no gradients, through plain `pipe(prompt, generator=...)` calls (videos: frames
averaged; diffusion LMs such as LLaDA2Pipeline: their `.texts`, scored by text rewards, e.g. the `shapes-retrieval`
verifier).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from ..families import Family, UnsupportedModelError, family_for_pipeline, supported_families
from ..families.prompt import PER_PROMPT, encode_prompt_once, text_keywords
from ..families.registry import HOW_TO_ADD
from .noise_regularizer import chi_regularizer

# set by the search itself; a caller's value would be silently overridden, so it is refused
SEARCH_ARGUMENTS = ("generator", "latents", "return_dict", "prompt_embeds", "negative_prompt_embeds",
                    "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "prompt_attention_mask",
                    "negative_prompt_attention_mask")  # fmt: skip
_MAX_SEED = 2**63 - 1


class NoiseSearchConfigError(ValueError):
    """A `NoiseSearchConfig` field out of range; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _real(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or math.isnan(value):
        raise NoiseSearchConfigError(name, f"NoiseSearchConfig.{name} must be a number {allowed}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class NoiseSearchConfig:
    """CARINOX's noise search settings (defaults: carinox training/optim.py + arguments.py, i.e. ReNO's)."""

    seeds: int | tuple[int, ...] = 1  # N: seeds 0 … N−1; or the seeds themselves. Stored as a tuple
    iterations: int = 50  # optimization steps per seed, ≥ 0; 0 = exploration only (best of N, no gradients)
    lr: float = 5.0  # SGD learning rate, > 0 (ReNO: 5 at 512², 10 at 1024²)
    momentum: float = 0.9  # SGD momentum, in [0, 1)
    nesterov: bool = True  # Nesterov momentum (needs momentum > 0)
    grad_clip: float = 0.1  # τ: norm bound of each reward's gradient and of their sum, > 0 (inf: no clipping)
    reg_weight: float = 0.01  # γ of the χ-norm regularizer, ≥ 0 (0: off)
    gradient_checkpointing: bool = False  # recompute the denoiser's / VAE's activations in the backward pass
    batched_vjp: bool = False  # all rewards' pullbacks in one vmapped backward (is_grads_batched)
    compile: bool = False  # torch.compile the denoiser(s) and the VAE decoder for the search (restored after)

    def __post_init__(self) -> None:
        seeds = self.seeds
        if _is_int(seeds):
            if seeds < 1:
                raise NoiseSearchConfigError(
                    "seeds", f"NoiseSearchConfig.seeds must be an integer ≥ 1 (seeds 0 … N−1) or a list of seeds, "
                    f"got {seeds}"
                )  # fmt: skip
            seeds = tuple(range(int(seeds)))
        elif isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0:
            if not all(_is_int(s) and 0 <= s <= _MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
                raise NoiseSearchConfigError(
                    "seeds", f"NoiseSearchConfig.seeds must hold distinct integers in [0, 2**63 − 1], got {seeds!r}"
                )
            seeds = tuple(int(s) for s in seeds)
        else:
            raise NoiseSearchConfigError(
                "seeds", f"NoiseSearchConfig.seeds must be an integer ≥ 1 or a non-empty list of seeds, got {seeds!r}"
            )
        object.__setattr__(self, "seeds", seeds)
        if not _is_int(self.iterations) or self.iterations < 0:
            raise NoiseSearchConfigError(
                "iterations", f"NoiseSearchConfig.iterations must be an integer ≥ 0, got {self.iterations!r}"
            )
        object.__setattr__(self, "iterations", int(self.iterations))
        if not (math.isfinite(lr := _real("lr", self.lr, "> 0")) and lr > 0):
            raise NoiseSearchConfigError("lr", f"NoiseSearchConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not 0.0 <= _real("momentum", self.momentum, "in [0, 1)") < 1.0:
            raise NoiseSearchConfigError(
                "momentum", f"NoiseSearchConfig.momentum must be in [0, 1), got {self.momentum!r}"
            )
        if not _real("grad_clip", self.grad_clip, "> 0") > 0:
            raise NoiseSearchConfigError(
                "grad_clip", f"NoiseSearchConfig.grad_clip must be > 0 (inf: no clipping), got {self.grad_clip!r}"
            )
        reg = _real("reg_weight", self.reg_weight, "≥ 0")
        if not (math.isfinite(reg) and reg >= 0):
            raise NoiseSearchConfigError(
                "reg_weight", f"NoiseSearchConfig.reg_weight must be a finite number ≥ 0, got {self.reg_weight!r}"
            )
        for name in ("nesterov", "gradient_checkpointing", "batched_vjp", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise NoiseSearchConfigError(
                    name, f"NoiseSearchConfig.{name} must be True or False, got {getattr(self, name)!r}"
                )
        if self.nesterov and self.momentum == 0:
            raise NoiseSearchConfigError(
                "nesterov", "NoiseSearchConfig.nesterov=True needs momentum in (0, 1), got momentum=0"
            )
        for name in ("lr", "momentum", "grad_clip", "reg_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True)
class SearchStep:
    """One evaluated noise: its rewards, loss, and (when optimizing) gradient norms (CARINOX's per-iteration log)."""

    iteration: int  # 0 = the seed's initial noise
    loss: float  # Σ_i (1 − r~_i), unweighted: what the best iterate is chosen by
    objective: float  # Σ_i λ_i·r~_i, weighted: what exploration alone ranks seeds by
    scores: dict[str, float]  # raw reward scores (videos: mean over frames)
    units: dict[str, float]  # r~_i = reward.unit(score)
    reg: float | None = None  # the χ-norm regularizer γ·(0.5‖ε‖² − (d−1)·log‖ε‖) (optimization only)
    grad_norms: dict[str, float] = field(default_factory=dict)  # ‖∇_ε loss_i‖ before clipping
    update_norm: float | None = None  # ‖Σ_i clip(g_i)‖ after the second clip


@dataclass(frozen=True)
class NoiseSearchResult:
    """The chosen candidate (CARINOX / ReNO): the pipeline's own output of it, its seed, latents, scores, history."""

    output: Any  # the stock pipeline output object (e.g. StableDiffusionPipelineOutput, WanPipelineOutput)
    images: Any  # output.images (image pipelines), output.frames (video), output.texts (diffusion LMs)
    seed: int
    scores: dict[str, float]  # raw reward scores of the chosen image (videos: mean over frames)
    units: dict[str, float]  # r~ of each reward
    latents: torch.Tensor | None  # the chosen noise in the pipeline's `latents=` format (None: family unknown)
    iteration: int  # which iterate of the seed was chosen (0: its initial noise)
    loss: float  # Σ_i (1 − r~_i) of the chosen image
    history: dict[int, list[SearchStep]]  # per seed, per iteration


def draw_noise(
    pipe: Any, family: Family, kwargs: dict, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise in the `latents=` format, the CPU generator's state after the draw) for seed `seed`, exactly as
    `pipe(**kwargs, generator=torch.Generator().manual_seed(seed))` draws it (CARINOX)."""
    generator = torch.Generator().manual_seed(seed)
    grid = randn_tensor(family.latents.noise_shape(pipe, kwargs), generator=generator, device=pipe._execution_device,
                        dtype=dtype)  # (1, C, [F',] h, w)  # fmt: skip
    return family.latents.from_grid(pipe, grid), generator.get_state()


def _clip(grad: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.nn.utils.clip_grad_norm_` on one tensor: (grad scaled to norm ≤ max_norm, its norm before, a 0-d tensor).

    All on the device: no host synchronization, so a gradient step's kernels queue up without waiting on the GPU."""
    norm = grad.norm()
    if math.isfinite(max_norm):
        grad = grad * (max_norm / (norm + 1e-6)).clamp(max=1.0)
    return grad, norm


def _unit(reward: Any, scores: torch.Tensor) -> torch.Tensor:
    unit = getattr(reward, "unit", None)
    return unit(scores) if unit is not None else scores  # a reward without `unit` is taken to be in [0, 1]


def _first_sample(media: Any) -> torch.Tensor:
    """A pipeline output's first sample as (N, 3, H, W) float pixels in [0, 1]; N = frames for videos, else 1."""
    if isinstance(media, (list, tuple)):
        item = media[0]
        frames = list(item) if isinstance(item, (list, tuple)) else [item]
        arrays = [np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in frames]
        x = torch.from_numpy(np.stack(arrays))  # (N, H, W, 3)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x.permute(0, 3, 1, 2)
    if isinstance(media, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(media[0]))  # (H, W, 3) or (F, H, W, 3)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        x = x[None] if x.ndim == 3 else x
        return x.permute(0, 3, 1, 2)
    if isinstance(media, torch.Tensor):
        x = media[0]  # (3, H, W) or (F, 3, H, W)
        return x[None] if x.ndim == 3 else x
    raise TypeError(f"cannot read pixels from a pipeline output of type {type(media).__name__}")


def _media(output: Any) -> Any:
    return output.frames if hasattr(output, "frames") else output.images


@contextlib.contextmanager
def _frozen(pipe: Any) -> Iterator[None]:
    """Pipeline weights frozen for the search (gradients flow to the noise only), restored exactly after."""
    changed = []
    for module in getattr(pipe, "components", {}).values():
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                if p.requires_grad:
                    changed.append(p)
                    p.requires_grad_(False)
    try:
        yield
    finally:
        for p in changed:
            p.requires_grad_(True)


@contextlib.contextmanager
def _checkpointing(pipe: Any, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing on the denoiser(s) and VAE that support it, for the search only."""
    switched = []
    if enabled:
        for name in ("unet", "transformer", "transformer_2", "vae"):
            model = getattr(pipe, name, None)
            if getattr(model, "_supports_gradient_checkpointing", False) and not model.is_gradient_checkpointing:
                model.enable_gradient_checkpointing()
                switched.append(model)
    try:
        yield
    finally:
        for model in switched:
            model.disable_gradient_checkpointing()


COMPILE_OPTIONS: dict[str, Any] = {}  # torch.compile keywords for `compile=True` (tests: {"backend": "aot_eager"})
COMPILED_MODULES = ("unet", "transformer", "transformer_2")  # denoisers; plus the VAE's decoder


@contextlib.contextmanager
def _compiled(pipe: Any, enabled: bool) -> Iterator[None]:
    """The denoiser(s) and the VAE decoder through `torch.compile` for the search only, then exactly as before.

    A one-step generator's gradient step is thousands of small kernels (UNet, VAE decoder, and their two backward
    passes): compiled, they fuse and launch from generated code, and the backward is compiled with them (AOTAutograd).
    `nn.Module.compile` sets the module's `_compiled_call_impl`; it is put back as it was afterwards.
    """
    modules = []
    if enabled:
        modules = [getattr(pipe, name, None) for name in COMPILED_MODULES]
        modules.append(getattr(getattr(pipe, "vae", None), "decoder", None))
        modules = [m for m in modules if isinstance(m, torch.nn.Module) and m._compiled_call_impl is None]
        for module in modules:
            module.compile(**COMPILE_OPTIONS)
    try:
        yield
    finally:
        for module in modules:
            module._compiled_call_impl = None


def _parallel_denoisers(pipe: Any) -> list[tuple[torch.nn.Module, Any]]:
    """(denoiser, its diffusers ContextParallelConfig) for each denoiser of the pipeline under context parallelism."""
    from ..attention_processors.context_parallel import context_parallel_config

    found = []
    for name in COMPILED_MODULES:
        model = getattr(pipe, name, None)
        cp = context_parallel_config(model) if isinstance(model, torch.nn.Module) else None
        if cp is not None:
            found.append((model, cp))
    return found


class _SumOverRanks(torch.autograd.Function):
    """Identity forward; backward: the gradient summed over a process group (all-reduce)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


@contextlib.contextmanager
def _rank_sums(pipe: Any) -> Iterator[None]:
    """Under diffusers' context parallelism, the gradient of each denoiser input that needs one summed over the ranks.

    The plan shards the replicated latents with a plain slice, whose backward leaves each rank the gradient of its own
    tokens only (zeros elsewhere), while the scheduler's step x + Δσ·v(x) adds the full gradient of x on every rank:
    without the sum, each rank's noise gradient misses the other ranks' tokens and the ranks drift apart. The
    gathered output's loss is the same on every rank, so the sum is the one-process gradient."""

    def hook(group: Any) -> Any:
        def summed(x: Any) -> Any:
            return _SumOverRanks.apply(x, group) if isinstance(x, torch.Tensor) and x.requires_grad else x

        def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return tuple(summed(a) for a in args), {k: summed(v) for k, v in kwargs.items()}

        return pre

    from ..attention_processors.diffusers_compat import context_parallel_group

    handles = [model.register_forward_pre_hook(hook(context_parallel_group(cp)), with_kwargs=True)
               for model, cp in _parallel_denoisers(pipe)]  # fmt: skip
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _quiet(pipe: Any, enabled: bool) -> Iterator[None]:
    """The pipeline's own per-call progress bar off while the search runs many calls; its settings restored after."""
    own = getattr(pipe, "_progress_bar_config", None)
    if enabled and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(**{**(own or {}), "disable": True})
    try:
        yield
    finally:
        if enabled and hasattr(pipe, "set_progress_bar_config"):
            if own is None:
                del pipe._progress_bar_config
            else:
                pipe._progress_bar_config = own


def _load_rewards(rewards: Any, device: torch.device) -> dict[str, tuple[Any, float]]:
    """name → (reward, λ) from a {name: weight} / {name: Reward} / {name: (Reward, weight)} mapping, a Reward, None."""
    from .. import rewards as registry

    if rewards is None:
        rewards = {registry.DEFAULT: 1.0}
    elif callable(rewards) and not isinstance(rewards, Mapping):
        rewards = {getattr(rewards, "name", None) or type(rewards).__name__: (rewards, 1.0)}
    if not isinstance(rewards, Mapping) or not rewards:
        raise ValueError(
            "rewards must be a non-empty {name: weight} or {name: (Reward, weight)} mapping, a Reward, or None "
            f"(unbottle.rewards.DEFAULT), got {rewards!r}"
        )
    loaded = {}
    for name, value in rewards.items():
        if isinstance(value, tuple) and len(value) == 2:
            reward, weight = value
        elif callable(value):
            reward, weight = value, 1.0
        else:
            reward, weight = None, value
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight)
                                                                                   and weight > 0):  # fmt: skip
            raise ValueError(f"rewards[{name!r}] must have a finite weight > 0 (λ), got {weight!r}")
        if reward is None:
            reward = registry.load_reward(name, device=device)
        if not callable(reward):
            raise TypeError(f"rewards[{name!r}] must be a Reward (callable on images and prompts), got {reward!r}")
        loaded[str(name)] = (reward, float(weight))
    return loaded


def _reward_pixels(reward: Any, pixels: torch.Tensor) -> torch.Tensor:
    dtype = getattr(reward, "dtype", None)
    return pixels.to(dtype) if isinstance(dtype, torch.dtype) and dtype.is_floating_point else pixels.float()


class NoiseSearch:
    """Reward-guided initial-noise exploration and optimization on a stock pipeline (CARINOX; ReNO)."""

    def __init__(
        self,
        pipe: Any,
        rewards: Mapping[str, Any] | Any | None = None,
        *,
        seeds: int | Sequence[int] = 1,
        iterations: int = 50,
        lr: float = 5.0,
        momentum: float = 0.9,
        nesterov: bool = True,
        grad_clip: float = 0.1,
        reg_weight: float = 0.01,
        gradient_checkpointing: bool = False,
        batched_vjp: bool = False,
        compile: bool = False,
        progress: bool = True,
    ) -> None:
        self.config = NoiseSearchConfig(
            seeds=tuple(seeds) if isinstance(seeds, (list, range)) else seeds, iterations=iterations, lr=lr,
            momentum=momentum, nesterov=nesterov, grad_clip=grad_clip, reg_weight=reg_weight,
            gradient_checkpointing=gradient_checkpointing, batched_vjp=batched_vjp, compile=compile,
        )  # fmt: skip
        self.pipe, self.progress = pipe, bool(progress)
        self.family: Family | None = family_for_pipeline(pipe, "noise", required=False)
        if self.config.iterations > 0 and self.family is None:
            raise UnsupportedModelError(
                f"unbottle.NoiseSearch cannot optimize the noise of a {type(pipe).__name__} "
                f"(iterations={self.config.iterations}); gradient noise optimization supports: "
                f"{supported_families('noise')}. iterations=0 (exploration: best of N seeds) works with any pipeline; "
                f"{HOW_TO_ADD}"
            )
        self.rewards = _load_rewards(rewards, getattr(pipe, "_execution_device", torch.device("cpu")))
        text = [name for name, (r, _) in self.rewards.items() if getattr(r, "modality", "image") == "text"]
        if text and self.config.iterations > 0:
            raise ValueError(f"rewards {', '.join(text)} score texts (not differentiable): iterations must be 0 "
                             f"(exploration), got {self.config.iterations}")  # fmt: skip

    def __repr__(self) -> str:
        weights = {name: w for name, (_, w) in self.rewards.items()}
        return f"NoiseSearch({type(self.pipe).__name__}, rewards={weights}, {self.config})"

    # -- scoring ----------------------------------------------------------------------------------------------------
    def _evaluate(self, pixels: torch.Tensor, prompt: str) -> tuple[dict, dict]:
        """(raw scores, units) of (N, 3, H, W) pixels, without gradients; N frames are averaged."""
        raw, units = {}, {}
        with torch.no_grad():
            for name, (reward, _) in self.rewards.items():
                scores = reward(_reward_pixels(reward, pixels), [prompt] * pixels.shape[0]).float()  # (N,)
                raw[name] = float(scores.mean())
                units[name] = float(_unit(reward, scores).mean())
        return raw, units

    def _evaluate_output(self, output: Any, prompt: str) -> tuple[dict, dict]:
        """(raw scores, units) of a stock output's first sample: its text (diffusion LMs) or its pixels."""
        texts = getattr(output, "texts", None)
        kinds = {getattr(r, "modality", "image") for r, _ in self.rewards.values()}
        if texts is not None or not (hasattr(output, "frames") or hasattr(output, "images")):
            if kinds != {"text"} or texts is None:
                raise ValueError(f"{type(self.pipe).__name__} makes texts: every reward must be a text reward "
                                 "(e.g. 'shapes-retrieval' for the shapes DLM), and output_type='text'")  # fmt: skip
            raw, units = {}, {}
            for name, (reward, _) in self.rewards.items():
                scores = reward(list(texts[:1]), [prompt]).float()  # (1,)
                raw[name], units[name] = float(scores.mean()), float(_unit(reward, scores).mean())
            return raw, units
        if "text" in kinds:
            raise ValueError(f"{type(self.pipe).__name__} makes images: text rewards cannot score them")
        return self._evaluate(_first_sample(_media(output)), prompt)

    def _step(self, iteration: int, raw: dict, units: dict, **extra: Any) -> SearchStep:
        loss = sum(1.0 - u for u in units.values())
        objective = sum(w * units[name] for name, (_, w) in self.rewards.items())
        return SearchStep(iteration, loss, objective, raw, units, **extra)

    # -- generation -------------------------------------------------------------------------------------------------
    def _check(self, prompt: Any, kwargs: dict) -> dict:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be one non-empty string (the rewards score it), got {prompt!r}")
        refused = [name for name in SEARCH_ARGUMENTS if name in kwargs]
        if refused:
            raise TypeError(f"{', '.join(refused)}: set by NoiseSearch (seeds, latents and the encoded prompt)")
        for name in PER_PROMPT:
            if kwargs.get(name, 1) != 1:
                raise ValueError(f"{name}={kwargs[name]!r}: NoiseSearch makes one sample per seed; use seeds=N")
        if kwargs.get("output_type") in ("latent", "seq"):
            raise ValueError('output_type="latent": NoiseSearch scores pixels; use "pil", "np" or "pt"')
        kwargs = dict(kwargs)
        default = inspect.signature(type(self.pipe).__call__).parameters.get("output_type")
        kwargs.setdefault("output_type", default.default if default is not None else "pil")
        return kwargs

    def __call__(self, prompt: str, **pipe_kwargs: Any) -> NoiseSearchResult:
        """Search the initial noise for `prompt` (CARINOX: best of the seeds, each optimized); pipe(...)'s kwargs."""
        kwargs = self._check(prompt, pipe_kwargs)
        if self.config.iterations == 0:
            return self._explore(prompt, kwargs)
        return self._optimize(prompt, kwargs)

    def _bar(self, total: int, what: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"noise search ({what})", disable=not self.progress, leave=False)

    @torch.no_grad()
    def _explore(self, prompt: str, kwargs: dict) -> NoiseSearchResult:
        """Best of N seeds by Σ λ_i·r~_i through plain stock calls: any pipeline, no gradients (CARINOX)."""
        history: dict[int, list[SearchStep]] = {}
        best: tuple[SearchStep, int, Any] | None = None
        with _quiet(self.pipe, self.progress and len(self.config.seeds) > 1), \
                self._bar(len(self.config.seeds), "explore") as bar:  # fmt: skip
            for seed in self.config.seeds:
                output = self.pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **kwargs)
                step = self._step(0, *self._evaluate_output(output, prompt))
                history[seed] = [step]
                if best is None or step.objective > best[0].objective:
                    best = (step, seed, output)
                bar.update(1)
                bar.set_postfix(seed=seed, objective=f"{step.objective:.4f}")
        step, seed, output = best
        latents = None
        if self.family is not None:  # the chosen noise, as the pipeline drew it
            dtype = self.family.latents.noise_dtype(self._encode(kwargs, prompt))
            latents = draw_noise(self.pipe, self.family, kwargs, seed, dtype)[0]
        media = output.texts if getattr(output, "texts", None) is not None else _media(output)
        return NoiseSearchResult(output, media, seed, step.scores, step.units, latents, 0, step.loss, history)

    def _encode(self, kwargs: dict, prompt: str) -> dict[str, torch.Tensor]:
        # the negative always (CFG on or off): the cache serves every call
        return encode_prompt_once(self.pipe, self.family.prompt, dict(kwargs, prompt=prompt), always_negative=True)

    def _call_arguments(self, prompt: str, kwargs: dict) -> tuple[dict, torch.dtype]:
        """The stock call's keywords with the prompt encoded once, and the latents' dtype (CARINOX caching)."""
        embeds = self._encode(kwargs, prompt)
        dtype = self.family.latents.noise_dtype(embeds)
        if "encode_prompt" in self.pipe.__dict__:  # a wrapped encode_prompt (structured guidance) must see each call
            return dict(kwargs, prompt=prompt), dtype
        texts = text_keywords(self.pipe)  # None, not left out: a default text (PixArt's negative "") would clash
        return {**{k: v for k, v in kwargs.items() if k not in texts}, **dict.fromkeys(texts), **embeds}, dtype

    def _optimize(self, prompt: str, kwargs: dict) -> NoiseSearchResult:
        """CARINOX: for each seed, SGD-Nesterov on the noise with per-reward clipped gradients; best over all."""
        cfg, pipe = self.config, self.pipe
        parallel = _parallel_denoisers(pipe)
        if cfg.batched_vjp and len(self.rewards) > 1 and parallel:
            model, cp = parallel[0]
            raise NoiseSearchConfigError(
                "batched_vjp", f"NoiseSearchConfig.batched_vjp=True does not run under context parallelism (this "
                f"{type(model).__name__} runs under ulysses_degree={cp.ulysses_degree}, ring_degree={cp.ring_degree}: "
                "its all-to-all backward has no batching rule); allowed: batched_vjp=False (the same numbers, one "
                "pullback per reward)"
            )  # fmt: skip
        call, dtype = self._call_arguments(prompt, kwargs)
        output_type = call.pop("output_type")
        history: dict[int, list[SearchStep]] = {}
        best: tuple[SearchStep, int, torch.Tensor, torch.Tensor] | None = None  # step, seed, latents, rng state
        total = len(cfg.seeds) * cfg.iterations
        with _frozen(pipe), _rank_sums(pipe), _checkpointing(pipe, cfg.gradient_checkpointing), \
                _compiled(pipe, cfg.compile), _quiet(pipe, self.progress), \
                self._bar(total, f"{len(cfg.seeds)} seeds × {cfg.iterations} iterations") as bar:  # fmt: skip
            for seed in cfg.seeds:
                noise, state = draw_noise(pipe, self.family, kwargs, seed, dtype)
                steps, (step, latents) = self._optimize_seed(prompt, call, noise, state, dtype, bar, seed)
                history[seed] = steps
                if best is None or step.loss < best[0].loss:
                    best = (step, seed, latents, state)
        step, seed, latents, state = best
        with torch.no_grad():  # the chosen noise through the stock pipeline, in the caller's output type
            output = pipe(**call, latents=latents.to(dtype), generator=_generator(state), output_type=output_type)
        return NoiseSearchResult(output, _media(output), seed, step.scores, step.units, latents.to(dtype),
                                 step.iteration, step.loss, history)  # fmt: skip

    def _generate(self, call: dict, latents: torch.Tensor, state: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """(N, 3, H, W) pixels in [0, 1] from the stock `__call__` with autograd on (`__wrapped__` of its no_grad)."""
        run = differentiable_call if grad else type(self.pipe).__call__
        output = run(self.pipe, **call, latents=latents, generator=_generator(state), output_type="pt")
        pixels = _first_sample(_media(output))  # (N, 3, H, W)
        if grad and not pixels.requires_grad:
            raise RuntimeError(
                f"{type(self.pipe).__name__}'s output does not depend differentiably on latents= (a step of the "
                "pipeline leaves autograd, e.g. a watermarker or safety checker going through numpy); noise "
                "optimization needs the pixels as a function of the noise. Use iterations=0 (exploration)."
            )
        return pixels

    def _optimize_seed(self, prompt: str, call: dict, noise: torch.Tensor, state: torch.Tensor, dtype: torch.dtype,
                       bar: Any, seed: int) -> tuple[list[SearchStep], tuple[SearchStep, torch.Tensor]]:  # fmt: skip
        """One seed of CARINOX: `iterations` evaluations of ε, an SGD step after all but the last; the best."""
        cfg = self.config
        param = torch.nn.Parameter(noise.detach().float().clone())  # ε, float32 whatever the pipeline's dtype
        optimizer = torch.optim.SGD([param], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        steps: list[SearchStep] = []
        best: tuple[SearchStep, torch.Tensor] | None = None
        for iteration in range(cfg.iterations):
            if iteration < cfg.iterations - 1:
                step, update = self._gradient_step(iteration, prompt, call, param, dtype, state)
            else:  # the last iterate is only evaluated (no step follows it), so no gradient is computed for it
                with torch.no_grad():
                    scores = self._evaluate(self._generate(call, param.to(dtype), state, grad=False), prompt)
                    reg = chi_regularizer(param, cfg.reg_weight).sum()
                step, update = self._step(iteration, *scores, reg=float(reg)), None
            steps.append(step)
            if best is None or step.loss < best[0].loss:
                best = (step, param.detach().clone())
            if update is not None:
                param.grad = update
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(seed=seed, loss=f"{step.loss:.4f}", best=f"{best[0].loss:.4f}")
        return steps, best

    def _gradient_step(self, iteration: int, prompt: str, call: dict, param: torch.Tensor, dtype: torch.dtype,
                       state: torch.Tensor) -> tuple[SearchStep, torch.Tensor]:  # fmt: skip
        """ε's evaluation and CARINOX's update direction Clip_τ(Σ_i Clip_τ(∇_ε [λ_i(1 − r~_i) + reg(ε)])).

        Scores, norms and clipping stay on the device until the update is computed; the step's numbers reach the host
        in one transfer at the end (a host sync per reward would stall the GPU between the generator's passes)."""
        cfg, names = self.config, list(self.rewards)
        pixels = self._generate(call, param.to(dtype), state)  # (N, 3, H, W), its graph back to ε kept
        image = pixels.detach().float().requires_grad_(True)  # the rewards' graphs end here
        image_grads, raw, units = [], [], []
        for name in names:
            reward, weight = self.rewards[name]
            with torch.enable_grad():
                scores = reward(_reward_pixels(reward, image), [prompt] * image.shape[0]).float()  # (N,)
                r = _unit(reward, scores)  # (N,)
                loss = weight * (1.0 - r.mean())  # λ_i·(1 − r~_i); videos: frames averaged
                if not loss.requires_grad:
                    raise RuntimeError(f"reward {name!r} is not differentiable w.r.t. the pixels")
                (grad,) = torch.autograd.grad(loss, image)  # ∂loss_i/∂I: (N, 3, H, W)
            image_grads.append(grad.to(pixels.dtype))
            raw.append(scores.detach().mean())
            units.append(r.detach().mean())
        with torch.enable_grad():  # the χ-norm regularizer in float32, on ε itself
            eps = param.detach().requires_grad_(True)
            reg = chi_regularizer(eps, cfg.reg_weight).sum()
            (reg_grad,) = torch.autograd.grad(reg, eps)  # ε.shape
        pullbacks = self._pullbacks(pixels, param, image_grads)  # per reward ∂(λ_i(1 − r~_i))/∂ε: ε.shape
        clipped, norms = [], []
        for pullback in pullbacks:
            grad, norm = _clip(pullback.float() + reg_grad, cfg.grad_clip)  # ∇_ε loss_i, clipped to τ
            clipped.append(grad)
            norms.append(norm)
        update, _ = _clip(torch.stack(clipped).sum(0), cfg.grad_clip)  # Σ_i clip(g_i), clipped to τ again
        r = len(names)
        scalars = [*raw, *units, *norms, reg.detach(), update.norm()]  # rewards may live on another device
        numbers = torch.stack([t.to(update.device, torch.float64) for t in scalars]).tolist()  # the one host sync
        raw_d, units_d, norms_d = (dict(zip(names, numbers[i * r : (i + 1) * r], strict=True)) for i in range(3))
        step = self._step(iteration, raw_d, units_d, reg=numbers[3 * r], grad_norms=norms_d,
                          update_norm=numbers[3 * r + 1])  # fmt: skip
        return step, update

    def _pullbacks(self, pixels: torch.Tensor, param: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """One vector-Jacobian product through generator + VAE per reward (or one vmapped, `batched_vjp`)."""
        if self.config.batched_vjp and len(grads) > 1:
            (stacked,) = torch.autograd.grad(pixels, param, torch.stack(grads), is_grads_batched=True)
            return list(stacked)  # (R, *ε.shape) → R × ε.shape
        return [torch.autograd.grad(pixels, param, g, retain_graph=i < len(grads) - 1)[0] for i, g in enumerate(grads)]


def differentiable_call(pipe: Any, *args: Any, **kwargs: Any) -> Any:
    """`pipe(*args, **kwargs)` with autograd on: the stock `__call__` unwrapped from its `@torch.no_grad()` (ReNO)."""
    function = type(pipe).__call__
    function = getattr(function, "__wrapped__", function)  # torch.no_grad keeps the undecorated function there
    with torch.enable_grad():
        return function(pipe, *args, **kwargs)


def _generator(state: torch.Tensor) -> torch.Generator:
    """A CPU generator in the state the pipeline's own latent draw left it (ancestral/DDPM steps draw from it)."""
    generator = torch.Generator()
    generator.set_state(state)
    return generator

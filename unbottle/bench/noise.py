"""Noise-search benchmark (issue #8): seconds and peak memory per CARINOX / ReNO noise-optimization iteration.

`unbottle.NoiseSearch` (reward-guided initial-noise optimization) on a random-weight SD-Turbo-shaped pipeline with
two ViT-H-14 rewards, against one plain generation measured in the same run.

    unbottle bench noise -o bench/results        # or: python bench/noise_search.py -o bench/results   (a CUDA GPU)

What is real-size: everything that runs per iteration. The pipeline is a stock `StableDiffusionPipeline` shaped like
SD-Turbo (an SD 2.1 distillate): the SD 2.1-base `UNet2DConditionModel` (320/640/1280/1280 channels, head dims
5/10/20/20, linear projections, cross-attention width 1024; 865.9M parameters), the SD `AutoencoderKL` (4 latent
channels, scaling 0.18215; 83.7M) and an OpenCLIP-ViT-H-sized `CLIPTextModel` (1024 wide, 23 layers, 16 heads;
340.4M), with SD-Turbo's scheduler (`EulerDiscreteScheduler`, trailing timestep spacing), one step, guidance 0,
512×512. The rewards are the package's own `HPSReward` ("hps", weight 5) and `CLIPScoreReward` ("clip", weight 1)
around open_clip ViT-H-14 models (986.1M parameters each, `open_clip.create_model("ViT-H-14", pretrained=None)`),
each with open_clip's bundled ViT-H-14 tokenizer. Weights are random (speed and memory do not depend on them) and
built on the GPU from these configs, then cast to fp16: nothing is downloaded.

What is not: the prompt tokenizer of the pipeline is the offline test tokenizer (`unbottle.testing`, padded to 77
tokens like CLIP's), so the text encoder sees other token ids than SD-Turbo's; the prompt is encoded once per search
(as NoiseSearch does), outside the timed iterations.

Each row is one `NoiseSearch(pipe, rewards={"hps": 5, "clip": 1}, seeds=1, iterations=W + K + 1)` call in fp16:
W warm-up and K timed optimization iterations (the search's last iterate is only scored and takes no gradient, so
it is not an optimization iteration and is not timed). One iteration is the differentiable generation (UNet + VAE
decode with autograd through the stock `__call__`), both rewards' forward and backward, their pullbacks through
generator and VAE, clipping and the update direction: its time is the wall time of that step, CUDA synchronized
before and after, and seconds per iteration are the timed iterations' total over K. Rows: plain autograd, with
gradient checkpointing (UNet and VAE), with all pullbacks in one vmapped backward (`batched_vjp=True`), and with
the UNet and the VAE decoder compiled (`compile=True`; its first warm-up iteration compiles, which the row's time
budget does not count; the compile's seconds are that iteration's time in `warmup_s`). Peak
memory is `torch.cuda.max_memory_allocated` over the timed iterations (reset after the warm-up; weights included;
the CUDA context and the caching allocator's slack are not: see `reserved`). The same-run baseline is one plain
`pipe(...)` generation (no grad, prompt encoding included), the median of a few after a warm-up. A row that fails
(out of memory, an error) leaves an error string and the run goes on; a row past its time budget stops after the
iteration that crossed it (at least one timed) and says so. noise-<gpu>.json and .md are rewritten after the
baseline and after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import script
from .attention import _error_text, _free, _git_commit, _log, gpu_tag
from .e2e import _peak_reset, _timed, cast_like_from_pretrained
from .script import parse_names, share_quick_and_seed

NO_CUDA_MESSAGE = "the noise-search benchmark needs a CUDA GPU; torch sees none here"
PROMPT = "a photo of a red cube on a blue sphere"  # words the offline tokenizer spells as whole tokens
REWARD_WEIGHTS: dict[str, float] = {"hps": 5.0, "clip": 1.0}  # λ per reward (CARINOX / ReNO's HPS-heavy mix)
TARGET_S_PER_IT, TARGET_PEAK_GB = 0.25, 12.0  # issue #8's targets
RENO_A100 = {"s_per_it": 0.4, "peak_gb": 15.0}  # ReNO's reported SD-Turbo numbers on an A100 (issue #8)
SIZE, ITERATIONS, WARMUP, PLAIN_REPEATS, ROW_BUDGET_S = 512, 5, 2, 3, 30.0
QUICK_ITERATIONS, QUICK_WARMUP, QUICK_PLAIN_REPEATS = 2, 1, 1
# variant → NoiseSearch flags (four rows: one run still fits a short GPU lease)
VARIANTS: dict[str, dict[str, bool]] = {
    "autograd": {"gradient_checkpointing": False, "batched_vjp": False, "compile": False},
    "checkpointing": {"gradient_checkpointing": True, "batched_vjp": False, "compile": False},
    "batched-vjp": {"gradient_checkpointing": False, "batched_vjp": True, "compile": False},
    "compiled": {"gradient_checkpointing": False, "batched_vjp": False, "compile": True},
}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
TIMING_DEFINITION = (
    "seconds per optimization iteration: wall time (time.perf_counter, CUDA synchronized before and after) of each "
    "NoiseSearch gradient step (differentiable generation, both rewards forward + backward, the per-reward "
    "pullbacks, clipping), summed over the timed iterations and divided by their number, after the warm-up "
    "iterations of the same search; the SGD step on the noise between steps is not included. Peak: "
    "torch.cuda.max_memory_allocated over the timed iterations (weights included). Plain generation: one stock "
    "pipe(...) call (no grad, prompt encoding included), median of the repeats after a warm-up."
)

# ---- real-size configs (SD-Turbo = SD 2.1 shapes) -----------------------------------------------------------------
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, act_fn="silu",
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)  # fmt: skip
SD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)  # fmt: skip
OPENCLIP_H_TEXT = dict(  # CLIPTextConfig keywords; bos/eos/pad ids are those of the offline tokenizer
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=1024, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0,
    eos_token_id=1, pad_token_id=1,
)  # fmt: skip
SD_TURBO_SCHEDULER = dict(  # EulerDiscreteScheduler, SD-Turbo's scheduler_config.json
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing", interpolation_type="linear",
    use_karras_sigmas=False,
)  # fmt: skip
REWARD_MODEL = "ViT-H-14"  # HPSv2.1's and ReNO's CLIP backbone


@dataclass(frozen=True)
class Models:
    """The configs a run builds (SD-Turbo-shaped pipeline, open_clip rewards; CARINOX / ReNO); tests pass tiny ones."""

    unet: dict = field(default_factory=lambda: dict(SD21_UNET))
    vae: dict = field(default_factory=lambda: dict(SD_VAE))
    text_encoder: dict = field(default_factory=lambda: dict(OPENCLIP_H_TEXT))
    scheduler: dict = field(default_factory=lambda: dict(SD_TURBO_SCHEDULER))
    reward_model: str = REWARD_MODEL  # an open_clip architecture name
    reward_config: dict | None = None  # an open_clip model config registered under reward_model (tests: tiny)


@dataclass
class NoiseOptions:
    """What to run (CARINOX / ReNO noise search): variants, image size, warm-up and timed iterations, seed, budget."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    size: int = SIZE
    iterations: int = ITERATIONS  # timed optimization iterations per row
    warmup: int = WARMUP  # untimed optimization iterations before them, same search
    plain_repeats: int = PLAIN_REPEATS
    seed: int = 0
    quick: bool = False
    row_budget_s: float = ROW_BUDGET_S  # a row stops after the iteration that crosses it (≥ 1 timed iteration)


# ---- arguments ----------------------------------------------------------------------------------------------------


def parse_variants(text: str) -> list[str]:
    """Variant names, comma-separated, from VARIANTS (NoiseSearch settings, CARINOX / ReNO)."""
    return parse_names(text, VARIANTS, "--variants")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The noise-search benchmark's options (CARINOX / ReNO, issue #8); --quick/--seed are shared."""
    quick = f"noise: {QUICK_WARMUP} warm-up + {QUICK_ITERATIONS} timed iterations, {QUICK_PLAIN_REPEATS} plain run"
    seed = "noise: the noise seed"
    share_quick_and_seed(parser, quick, seed)
    parser.add_argument("--size", type=int, default=SIZE, metavar="PX",
                        help=f"noise: image height and width, a multiple of 64 (default {SIZE})")  # fmt: skip
    timed = f"noise: timed iterations per row (default {ITERATIONS}; --quick {QUICK_ITERATIONS})"
    parser.add_argument("--iterations", type=int, metavar="K", help=timed)
    warmups = f"noise: warm-up iterations per row (default {WARMUP}; --quick {QUICK_WARMUP})"
    parser.add_argument("--warmup-iterations", type=int, metavar="W", help=warmups)
    parser.add_argument("--variants", type=parse_variants, metavar="V,...",
                        help=f"noise: rows to run, of {', '.join(VARIANTS)} (default all)")  # fmt: skip
    budget = f"noise: seconds after which a row stops at its next iteration (default {ROW_BUDGET_S:g})"
    parser.add_argument("--row-budget", type=float, default=ROW_BUDGET_S, metavar="S", help=budget)


def options_from_args(args: argparse.Namespace) -> NoiseOptions:
    """NoiseOptions from parsed arguments (`unbottle bench noise` or bench/noise_search.py)."""
    from ..cli.errors import UsageError

    quick = bool(getattr(args, "quick", False))
    size = getattr(args, "size", SIZE)
    iterations = getattr(args, "iterations", None)
    iterations = (QUICK_ITERATIONS if quick else ITERATIONS) if iterations is None else iterations
    warmup = getattr(args, "warmup_iterations", None)
    warmup = (QUICK_WARMUP if quick else WARMUP) if warmup is None else warmup
    budget = getattr(args, "row_budget", ROW_BUDGET_S)
    if size is None or size < 64 or size % 64:
        raise UsageError(f"--size must be a multiple of 64 (the UNet's 3 downsamplings of the /8 latents), got {size}")
    if iterations < 1:
        raise UsageError(f"--iterations must be ≥ 1, got {iterations}")
    if warmup < 0:
        raise UsageError(f"--warmup-iterations must be ≥ 0, got {warmup}")
    if budget is None or not budget > 0:
        raise UsageError(f"--row-budget must be > 0 seconds, got {budget}")
    return NoiseOptions(
        variants=getattr(args, "variants", None) or list(DEFAULT_VARIANTS), size=size, iterations=iterations,
        warmup=warmup, plain_repeats=QUICK_PLAIN_REPEATS if quick else PLAIN_REPEATS,
        seed=getattr(args, "seed", 0) or 0, quick=quick, row_budget_s=float(budget),
    )  # fmt: skip


# ---- models -------------------------------------------------------------------------------------------------------


def register_open_clip(name: str, config: dict) -> None:
    """Register an open_clip model config under `name` (a tiny reward backbone for tests; ReNO's rewards use real)."""
    import open_clip

    if open_clip.get_model_config(name) == json.loads(json.dumps(config)):
        return
    with tempfile.TemporaryDirectory() as tmp:  # open_clip keeps what it read after the file is gone
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_pipeline(models: Models, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight SD-Turbo-shaped StableDiffusionPipeline built on `device` from configs (ReNO's generator)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..testing import tiny_clip_tokenizer

    with torch.device(device):  # random init on the GPU: seconds instead of minutes of CPU init
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**models.unet)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**models.vae)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**models.text_encoder))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(model_max_length=77), unet=unet,
        scheduler=EulerDiscreteScheduler(**models.scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cast_like_from_pretrained(component, dtype)
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_rewards(models: Models, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    """{"hps": HPSReward, "clip": CLIPScoreReward} around random-weight open_clip models (HPSv2 / ReNO's CLIP)."""
    import open_clip

    from ..rewards.clip import CLIPScoreReward
    from ..rewards.hps import HPSReward
    from ..rewards.openclip import OpenClipModel, _quiet_open_clip, transform_of

    if models.reward_config is not None:
        register_open_clip(models.reward_model, models.reward_config)
    rewards = {}
    for i, (name, cls) in enumerate((("hps", HPSReward), ("clip", CLIPScoreReward))):
        torch.manual_seed(seed + 10 + i)
        with torch.device(device), _quiet_open_clip():
            model = open_clip.create_model(models.reward_model, pretrained=None, device=device)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        clip = OpenClipModel(model, open_clip.get_tokenizer(models.reward_model), transform_of(model))
        rewards[name] = cls(clip)
    return rewards


# ---- measurements -------------------------------------------------------------------------------------------------


def _gib(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**30, 3)


def _gb(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 1e9, 3)


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _call_kwargs(options: NoiseOptions) -> dict:
    """SD-Turbo's request: one step, no classifier-free guidance, square images, tensors out (ReNO)."""
    return dict(num_inference_steps=1, guidance_scale=0.0, height=options.size, width=options.size, output_type="pt")


def measure_plain(pipe: Any, options: NoiseOptions, device: torch.device, log: Callable[[str], None] = _log) -> dict:
    """One plain no-grad `pipe(...)` generation (ReNO's baseline cost): median seconds after a warm-up, peak."""
    result: dict = {"s": None, "times_s": [], "warmup_s": None, "peak_gib": None, "peak_gb": None, "error": None}

    def call() -> object:
        return pipe(PROMPT, generator=torch.Generator().manual_seed(options.seed), **_call_kwargs(options))

    try:
        result["warmup_s"] = _timed(call, device)[0]
        _peak_reset(device)
        for _ in range(options.plain_repeats):
            result["times_s"].append(_timed(call, device)[0])
        result["s"] = statistics.median(result["times_s"])
        peak = _peak_bytes(device)
        result["peak_gib"], result["peak_gb"] = _gib(peak), _gb(peak)
        log(f"plain generation: {result['s']:.3f} s (warm-up {result['warmup_s']:.2f} s)")
    except Exception as e:  # noqa: BLE001 — recorded, the search rows still run
        result["error"] = _error_text(e)
        log(f"plain generation: {result['error']}")
    gc.collect()
    _free(device)
    return result


class _RowBudget(Exception):
    """Raised from inside a search to end a row past its time budget (what was timed stands)."""


def make_search(pipe: Any, rewards: dict[str, Any], variant: str, options: NoiseOptions) -> Any:
    """The row's NoiseSearch (CARINOX / ReNO): seed, W + K + 1 iterations, the variant's flags, given rewards."""
    from ..pipelines.noise_search import NoiseSearch

    weighted = {name: (rewards[name], weight) for name, weight in REWARD_WEIGHTS.items()}
    iterations = options.warmup + options.iterations + 1  # the last iterate is only scored: no gradient step
    return NoiseSearch(pipe, rewards=weighted, seeds=[options.seed], iterations=iterations, progress=False,
                       **VARIANTS[variant])  # fmt: skip


def _new_row(variant: str, options: NoiseOptions) -> dict:
    """A row with every key present (None until measured)."""
    return {
        "variant": variant, **VARIANTS[variant], "size": options.size, "warmup_iterations": options.warmup,
        "iterations": options.iterations, "timed_iterations": 0, "warmup_s": [], "times_s": [], "s_per_it": None,
        "it_per_s": None, "vs_plain": None, "peak_gib": None, "peak_gb": None, "reserved_gib": None,
        "weights_gib": None, "search_s": None, "loss_finite": None, "meets_time": None, "meets_memory": None,
        "stopped": None, "error": None,
    }  # fmt: skip


def measure_variant(pipe: Any, rewards: dict[str, Any], variant: str, options: NoiseOptions, device: torch.device,
                    plain_s: float | None, log: Callable[[str], None] = _log) -> dict:  # fmt: skip
    """Time one NoiseSearch setting's optimization iterations (CARINOX / ReNO) and its peak memory; errors land in
    the row."""
    row = _new_row(variant, options)
    steps: list[float] = []
    peaks: list[int] = []
    warmup = [options.warmup]  # shortened when the warm-up alone runs past the row budget
    total = options.warmup + options.iterations
    clock = [time.perf_counter()]  # when the row's budget started counting
    try:
        search = make_search(pipe, rewards, variant, options)
        gradient_step = search._gradient_step

        def timed_step(*args: Any, **kwargs: Any) -> Any:
            index = len(steps)
            if index == warmup[0]:
                _peak_reset(device)
            seconds, out = _timed(lambda: gradient_step(*args, **kwargs), device)
            steps.append(seconds)
            warm = index < warmup[0]
            if not warm and (peak := _peak_bytes(device)) is not None:
                peaks.append(peak)
            log(f"noise {variant}: iteration {index + 1}/{total} {seconds:.3f} s{' (warm-up)' if warm else ''}")
            if index == 0 and search.config.compile:
                clock[0] = time.perf_counter()  # the compilation (first iteration) does not count against the budget
            if time.perf_counter() - clock[0] > options.row_budget_s and index + 1 < total:
                if not warm:
                    raise _RowBudget
                warmup[0] = index + 1  # a warm-up past the budget ends: one timed iteration, then the row stops
            return out

        search._gradient_step = timed_step  # the instance's own step, timed: NoiseSearch calls self._gradient_step
        if device.type == "cuda":
            row["weights_gib"] = _gib(torch.cuda.memory_allocated(device))
        try:
            row["search_s"], result = _timed(lambda: search(PROMPT, **_call_kwargs(options)), device)
            row["loss_finite"] = all(math.isfinite(s.loss) for s in result.history[options.seed])
            del result
        except _RowBudget:
            done = len(steps) - warmup[0]
            row["stopped"] = f"row budget {options.row_budget_s:g} s reached after {done} timed iteration(s)"
            log(f"noise {variant}: {row['stopped']}")
        if len(steps) <= warmup[0]:
            raise RuntimeError(f"the search ran {len(steps)} gradient step(s), no more than its warm-up")
    except Exception as e:  # noqa: BLE001 — out of memory, a failing setting: recorded, the run goes on
        row["error"] = _error_text(e)
        log(f"noise {variant}: {row['error']}")
    row["warmup_s"], row["times_s"] = steps[: warmup[0]], steps[warmup[0] :]
    row["warmup_iterations"] = min(warmup[0], len(steps))
    row["timed_iterations"] = len(row["times_s"])
    if row["times_s"]:  # what was timed stands, even when a later part of the row failed
        row["s_per_it"] = sum(row["times_s"]) / len(row["times_s"])
        row["it_per_s"] = 1.0 / row["s_per_it"] if row["s_per_it"] > 0 else None
        row["vs_plain"] = row["s_per_it"] / plain_s if plain_s else None
        row["meets_time"] = row["s_per_it"] <= TARGET_S_PER_IT
    if peaks:
        row["peak_gib"], row["peak_gb"] = _gib(max(peaks)), _gb(max(peaks))
        row["reserved_gib"] = _gib(torch.cuda.max_memory_reserved(device))
        row["meets_memory"] = max(peaks) <= TARGET_PEAK_GB * 1e9
    gc.collect()
    _free(device)
    return row


# ---- results: markdown, files -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _met(value: bool | None) -> str:
    return "—" if value is None else ("✓" if value else "✗")


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, the plain baseline, one row per NoiseSearch setting, targets, errors."""
    size = results.get("options", {}).get("size", SIZE)
    params = results.get("parameters") or {}
    millions = {k: f"{v / 1e6:.1f}M" for k, v in params.items()}
    plain = results.get("plain") or {}
    shapes = [f"- real-size: {results.get('real_size', '')}", f"- not real-size: {results.get('not_real_size', '')}"]
    shapes = shapes if results.get("real_size_models") else []
    lines = [
        f"# Noise-search benchmark, {results.get('gpu', '?')} ({results.get('dtype')}, "
        f"{results.get('models', 'SD-Turbo-shaped')} pipeline, random weights, {size}×{size})",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, diffusers {results.get('diffusers')}, open_clip {results.get('open_clip')}, "
        f"CUDA {results.get('cuda')}, unbottle {results.get('unbottle')} ({results.get('git_commit') or 'no git'}); "
        f"{results.get('started', '')}",
        "",
        f"- pipeline: StableDiffusionPipeline, UNet {millions.get('unet', '?')}, VAE {millions.get('vae', '?')}, "
        f"text encoder {millions.get('text_encoder', '?')} parameters; Euler (trailing), 1 step, guidance 0",
        f"- rewards: {', '.join(f'{n} ×{w:g}' for n, w in results.get('reward_weights', {}).items())} on open_clip "
        f"{results.get('reward_model')} ({millions.get('hps', '?')} + {millions.get('clip', '?')})",
        f"- NoiseSearch: 1 seed, {results.get('options', {}).get('warmup')} warm-up + "
        f"{results.get('options', {}).get('iterations')} timed iterations per row",
        *shapes,
        f"- time: {results.get('timing', TIMING_DEFINITION)}",
        f"- setup: pipeline built in {_fmt(results.get('setup_s', {}).get('pipeline'), 1)} s, rewards in "
        f"{_fmt(results.get('setup_s', {}).get('rewards'), 1)} s",
        "",
        f"plain generation (no grad): {_fmt(plain.get('s'), 3)} s, peak {_fmt(plain.get('peak_gb'))} GB"
        + (f" — {plain['error']}" if plain.get("error") else ""),
        "",
        "| variant | checkpointing | batched VJP | compiled | s/it | it/s | × plain generation | peak GB | peak GiB | "
        "reserved GiB | weights GiB | timed its | iterations s | first warm-up s | ≤ 0.25 s/it | ≤ 12 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.get("rows", []):
        runs = ", ".join(f"{t:.3f}" for t in r["times_s"]) or "—"
        lines.append(
            f"| {r['variant']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{'on' if r['batched_vjp'] else 'off'} | {'on' if r.get('compile') else 'off'} | "
            f"{_fmt(r['s_per_it'], 3)} | {_fmt(r['it_per_s'])} | "
            f"{_fmt(r['vs_plain'], 1, '×')} | {_fmt(r['peak_gb'])} | {_fmt(r['peak_gib'])} | "
            f"{_fmt(r['reserved_gib'])} | {_fmt(r['weights_gib'])} | {r['timed_iterations']}/{r['iterations']} | "
            f"{runs} | {_fmt(r['warmup_s'][0] if r['warmup_s'] else None, 1)} | {_met(r['meets_time'])} | "
            f"{_met(r['meets_memory'])} |"
        )
    reno = results.get("reno_a100", RENO_A100)
    lines += [
        "",
        f"Targets (issue #8): ≤ {TARGET_S_PER_IT:g} s/it and ≤ {TARGET_PEAK_GB:g} GB peak (10⁹ bytes, "
        f"max_memory_allocated). Context: ReNO's SD-Turbo numbers on an A100, {reno['s_per_it']:g} s/it and "
        f"{reno['peak_gb']:g} GB.",
        "",
    ]
    notes = [f"{r['variant']}: {r['stopped']}" for r in results.get("rows", []) if r.get("stopped")]
    notes += [f"{r['variant']}: non-finite loss (random weights in fp16)" for r in results.get("rows", [])
              if r.get("loss_finite") is False]  # fmt: skip
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    errors = [f"{r['variant']}: {r['error']}" for r in results.get("rows", []) if r.get("error")]
    errors += [f"plain generation: {plain['error']}"] if plain.get("error") else []
    errors += [f"setup: {results['setup_error']}"] if results.get("setup_error") else []
    if errors:
        lines += ["## Errors", "", *(f"- {e}" for e in errors), ""]
    if results.get("wall_s") is not None:
        lines.append(f"total benchmark wall time {results['wall_s']} s")
    return "\n".join(lines).rstrip() + "\n"


def output_stem(results: dict) -> str:
    """noise-<gpu>, plus the variants when a subset ran, the size when not 512, and -quick."""
    options = results.get("options", {})
    stem = f"noise-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    variants = options.get("variants") or list(DEFAULT_VARIANTS)
    if list(variants) != list(DEFAULT_VARIANTS):
        stem += "-" + "_".join(variants)
    if options.get("size", SIZE) != SIZE:
        stem += f"-{options['size']}"
    return stem + ("-quick" if options.get("quick") else "")


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write noise-<gpu>.json and .md (CARINOX / ReNO noise search); return {kind: path}."""
    return script.write_json_and_markdown(results, out_dir, output_stem(results), markdown_report(results))


# ---- running ------------------------------------------------------------------------------------------------------


def _environment(device: torch.device, dtype: torch.dtype, command: str, options: NoiseOptions,
                 models: Models) -> dict:  # fmt: skip
    """Versions, device and definitions: the JSON header."""
    import diffusers
    import open_clip

    from .. import __version__

    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else f"{device.type} ({platform.processor() or 'cpu'})"
    real, _, rest = __doc__.partition("What is real-size: ")[2].partition("\n\nWhat is not: ")
    return {
        "benchmark": "noise search (issue #8)", "command": command, "argv": sys.argv, "gpu": gpu,
        "gpu_tag": gpu_tag(gpu), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "open_clip": open_clip.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "unbottle": __version__, "git_commit": _git_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(dtype).removeprefix("torch."), "batch": 1, "prompt": PROMPT,
        "real_size_models": models == Models(),
        "models": "SD-Turbo-shaped, real-size" if models == Models() else "custom configs (not real-size)",
        "options": dataclasses.asdict(options), "reward_weights": dict(REWARD_WEIGHTS),
        "reward_model": models.reward_model, "timing": TIMING_DEFINITION,
        "targets": {"s_per_it": TARGET_S_PER_IT, "peak_gb": TARGET_PEAK_GB}, "reno_a100": dict(RENO_A100),
        "real_size": " ".join(real.split()), "not_real_size": " ".join(rest.partition("\n\n")[0].split()),
        "configs": {"unet": models.unet, "vae": models.vae, "text_encoder": models.text_encoder,
                    "scheduler": ("EulerDiscreteScheduler", models.scheduler), "reward_model": models.reward_model,
                    "reward_config": models.reward_config},
        "parameters": {}, "setup_s": {}, "setup_error": None, "plain": None, "rows": [],
    }  # fmt: skip


def run_benchmark(
    options: NoiseOptions, out_dir: str | Path, command: str, device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16, models: Models | None = None, log: Callable[[str], None] = _log,
) -> dict:  # fmt: skip
    """Build the models, measure the plain generation and every NoiseSearch row (CARINOX / ReNO); outputs rewritten
    after each. `models` replaces the real-size configs (the CPU tests pass tiny ones)."""
    device = torch.device(device)
    models = models or Models()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _environment(device, dtype, command, options, models)
    start = time.perf_counter()
    write_outputs(results, out_dir)
    pipe = rewards = None
    log(f"noise-search benchmark on {results['gpu']}: rows {', '.join(options.variants)}; {options.warmup} warm-up + "
        f"{options.iterations} timed iterations each, {options.size}×{options.size}")  # fmt: skip
    try:
        log(f"building the SD-Turbo-shaped pipeline on {device} ({results['dtype']})")
        results["setup_s"]["pipeline"], pipe = _timed(lambda: build_pipeline(models, device, dtype, options.seed),
                                                      device)  # fmt: skip
        results["parameters"].update({n: _count(getattr(pipe, n)) for n in ("unet", "vae", "text_encoder")})
        log(f"pipeline built in {results['setup_s']['pipeline']:.1f} s; building the {models.reward_model} rewards")
        results["setup_s"]["rewards"], rewards = _timed(lambda: build_rewards(models, device, dtype, options.seed),
                                                        device)  # fmt: skip
        results["parameters"].update({n: _count(r) for n, r in rewards.items()})
        log(f"rewards built in {results['setup_s']['rewards']:.1f} s")
    except Exception as e:  # noqa: BLE001 — e.g. out of memory building: every row says so
        results["setup_error"] = _error_text(e)
        log(f"setup: {results['setup_error']}")
    if results["setup_error"] is None:
        results["plain"] = measure_plain(pipe, options, device, log)
        write_outputs(results, out_dir)
        for variant in options.variants:
            row = measure_variant(pipe, rewards, variant, options, device, results["plain"]["s"], log)
            results["rows"].append(row)
            write_outputs(results, out_dir)
            error = f" {row['error']}" if row["error"] else ""
            log(f"noise {variant}: {_fmt(row['s_per_it'], 3)} s/it ({_fmt(row['vs_plain'], 1, '×')} a plain "
                f"generation), peak {_fmt(row['peak_gb'])} GB{error}")  # fmt: skip
    else:
        results["rows"] = [dict(_new_row(v, options), error=f"setup: {results['setup_error']}")
                           for v in options.variants]  # fmt: skip
    del pipe, rewards
    gc.collect()
    _free(device)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    paths = write_outputs(results, out_dir)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench noise` (CARINOX / ReNO noise search): refuse without CUDA (exit 2), run, exit 1 if a row
    failed."""
    from ..cli.errors import RunError

    results = script.run_and_print(args, command, NO_CUDA_MESSAGE, options_from_args, run_benchmark,
                                   lambda r: f"{output_stem(r)}.md")  # fmt: skip
    failed = [r["variant"] for r in results["rows"] if r["error"]]
    failed += ["plain generation"] if (results.get("plain") or {}).get("error") else []
    if failed:
        raise RunError(f"{len(failed)} measurement(s) failed (errors in the report): {', '.join(failed)}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of bench/noise_search.py: -o plus the noise options (CARINOX / ReNO)."""
    return script.build_parser(prog, __doc__.splitlines()[0], add_arguments)


def main(argv: Sequence[str] | None = None, prog: str = "bench/noise_search.py") -> int:
    """Entry point of bench/noise_search.py (CARINOX / ReNO); exit code 2 without CUDA, 1 if a measurement failed."""
    return script.script_main(None if argv is None else list(argv), prog, build_parser(prog), run_from_cli)

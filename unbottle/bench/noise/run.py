"""Noise-search benchmark: seconds and peak memory per CARINOX / ReNO noise-optimization iteration.

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
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import RunError
from .. import measure, script
from ..measure import error_text, free, gib, peak_reset, timed
from ..results import close_run, environment, fmt
from .models import Models, build_pipeline, build_rewards, parameter_count
from .options import (
    NO_CUDA_MESSAGE,
    PROMPT,
    RENO_A100,
    REWARD_WEIGHTS,
    TARGET_PEAK_GB,
    TARGET_S_PER_IT,
    TIMING_DEFINITION,
    VARIANTS,
    NoiseOptions,
    add_arguments,
    options_from_args,
)
from .report import output_stem, write_outputs

# ---- measurements -------------------------------------------------------------------------------------------------


def _gb(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 1e9, 3)


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _call_kwargs(options: NoiseOptions) -> dict:
    """SD-Turbo's request: one step, no classifier-free guidance, square images, tensors out (ReNO)."""
    return dict(num_inference_steps=1, guidance_scale=0.0, height=options.size, width=options.size, output_type="pt")


def measure_plain(pipe: Any, options: NoiseOptions, device: torch.device,
                  log: Callable[[str], None] = measure.log) -> dict:  # fmt: skip
    """One plain no-grad `pipe(...)` generation (ReNO's baseline cost): median seconds after a warm-up, peak."""
    result: dict = {"s": None, "times_s": [], "warmup_s": None, "peak_gib": None, "peak_gb": None, "error": None}

    def call() -> object:
        return pipe(PROMPT, generator=torch.Generator().manual_seed(options.seed), **_call_kwargs(options))

    try:
        result["warmup_s"] = timed(call, device)[0]
        peak_reset(device)
        for _ in range(options.plain_repeats):
            result["times_s"].append(timed(call, device)[0])
        result["s"] = statistics.median(result["times_s"])
        peak = _peak_bytes(device)
        result["peak_gib"], result["peak_gb"] = gib(peak, 3), _gb(peak)
        log(f"plain generation: {result['s']:.3f} s (warm-up {result['warmup_s']:.2f} s)")
    except Exception as e:  # noqa: BLE001 — recorded, the search rows still run
        result["error"] = error_text(e)
        log(f"plain generation: {result['error']}")
    gc.collect()
    free(device)
    return result


class _RowBudget(Exception):
    """Raised from inside a search to end a row past its time budget (what was timed stands)."""


def make_search(pipe: Any, rewards: dict[str, Any], variant: str, options: NoiseOptions) -> Any:
    """The row's NoiseSearch (CARINOX / ReNO): seed, W + K + 1 iterations, the variant's flags, given rewards."""
    from ...pipelines.noise_search import NoiseSearch

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
                    plain_s: float | None, log: Callable[[str], None] = measure.log) -> dict:  # fmt: skip
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
                peak_reset(device)
            seconds, out = timed(lambda: gradient_step(*args, **kwargs), device)
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
            row["weights_gib"] = gib(torch.cuda.memory_allocated(device), 3)
        try:
            row["search_s"], result = timed(lambda: search(PROMPT, **_call_kwargs(options)), device)
            row["loss_finite"] = all(math.isfinite(s.loss) for s in result.history[options.seed])
            del result
        except _RowBudget:
            done = len(steps) - warmup[0]
            row["stopped"] = f"row budget {options.row_budget_s:g} s reached after {done} timed iteration(s)"
            log(f"noise {variant}: {row['stopped']}")
        if len(steps) <= warmup[0]:
            raise RuntimeError(f"the search ran {len(steps)} gradient step(s), no more than its warm-up")
    except Exception as e:  # noqa: BLE001 — out of memory, a failing setting: recorded, the run goes on
        row["error"] = error_text(e)
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
        row["peak_gib"], row["peak_gb"] = gib(max(peaks), 3), _gb(max(peaks))
        row["reserved_gib"] = gib(torch.cuda.max_memory_reserved(device), 3)
        row["meets_memory"] = max(peaks) <= TARGET_PEAK_GB * 1e9
    gc.collect()
    free(device)
    return row


# ---- running ------------------------------------------------------------------------------------------------------


def _environment(device: torch.device, dtype: torch.dtype, command: str, options: NoiseOptions,
                 models: Models) -> dict:  # fmt: skip
    """Versions, device and definitions: the JSON header."""
    real, _, rest = __doc__.partition("What is real-size: ")[2].partition("\n\nWhat is not: ")
    return {
        **environment("noise search", command, device, ("diffusers", "open_clip")),
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
    dtype: torch.dtype = torch.float16, models: Models | None = None, log: Callable[[str], None] = measure.log,
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
        results["setup_s"]["pipeline"], pipe = timed(lambda: build_pipeline(models, device, dtype, options.seed),
                                                      device)  # fmt: skip
        results["parameters"].update({n: parameter_count(getattr(pipe, n)) for n in ("unet", "vae", "text_encoder")})
        log(f"pipeline built in {results['setup_s']['pipeline']:.1f} s; building the {models.reward_model} rewards")
        results["setup_s"]["rewards"], rewards = timed(lambda: build_rewards(models, device, dtype, options.seed),
                                                        device)  # fmt: skip
        results["parameters"].update({n: parameter_count(r) for n, r in rewards.items()})
        log(f"rewards built in {results['setup_s']['rewards']:.1f} s")
    except Exception as e:  # noqa: BLE001 — e.g. out of memory building: every row says so
        results["setup_error"] = error_text(e)
        log(f"setup: {results['setup_error']}")
    if results["setup_error"] is None:
        results["plain"] = measure_plain(pipe, options, device, log)
        write_outputs(results, out_dir)
        for variant in options.variants:
            row = measure_variant(pipe, rewards, variant, options, device, results["plain"]["s"], log)
            results["rows"].append(row)
            write_outputs(results, out_dir)
            error = f" {row['error']}" if row["error"] else ""
            log(f"noise {variant}: {fmt(row['s_per_it'], 3)} s/it ({fmt(row['vs_plain'], 1, '×')} a plain "
                f"generation), peak {fmt(row['peak_gb'])} GB{error}")  # fmt: skip
    else:
        results["rows"] = [dict(_new_row(v, options), error=f"setup: {results['setup_error']}")
                           for v in options.variants]  # fmt: skip
    del pipe, rewards
    gc.collect()
    free(device)
    close_run(results, start, lambda r: write_outputs(r, out_dir), log)
    return results


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench noise` (CARINOX / ReNO noise search): refuse without CUDA (exit 2), run, exit 1 if a row
    failed."""
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

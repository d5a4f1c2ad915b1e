"""End-to-end benchmark: whole-generation wall time, stock vs Bottleneck Sampling (Tian et al., 2025),
alone and with sparse attention, measured in the same run on random-weight real-size pipelines.

    unbottle bench e2e -o bench/results          # or: python bench/e2e.py -o bench/results   (a CUDA GPU)

What is real-size: the denoiser and the VAE. FLUX.1-dev's `FluxTransformer2DModel` (19 double + 38 single blocks,
3072 = 24 heads × 128, T5 width 4096, CLIP pooled 768, guidance embedding; 11.9B parameters) with its 16-channel
`AutoencoderKL` (83.8M) and its scheduler (FlowMatchEuler, dynamic shift); Wan2.1-T2V-1.3B's `WanTransformer3DModel`
(30 layers, 1536 = 12 heads × 128, FFN 8960; 1.42B parameters, the checkpoint's count behind the "1.3B" name) with
`AutoencoderKLWan` (127M) and the scheduler the Diffusers checkpoint ships (UniPC, flow prediction, flow shift 3);
Stable Diffusion 3 medium's `SD3Transformer2DModel` (24 joint blocks, 1536 = 24 heads × 64, patch 2; 2.03B parameters)
with its 16-channel `AutoencoderKL` and scheduler (FlowMatchEuler, static shift 3); Wan2.2-T2V-A14B's two experts
(`WanTransformer3DModel`, 40 layers, 5120 = 40 heads × 128, FFN 13824; 14.29B parameters each, the high-noise one
while t ≥ 875) with the Wan2.1 VAE and UniPC at flow shift 12; Qwen-Image's `QwenImageTransformer2DModel` (60
dual-stream blocks, 3072 = 24 heads × 128; 20.43B parameters) with `AutoencoderKLQwenImage` and its scheduler
(FlowMatchEuler, dynamic exponential shift, terminal σ 0.02).
Weights are random (speed does not depend on them) and built on the GPU from these configs: nothing is downloaded.

What is not: text encoding. The pipelines carry the tiny test text encoders (`unbottle.testing`), which are never
called: each generation gets precomputed random `prompt_embeds` of the real shape (Flux: T5 1×512×4096 + pooled CLIP
1×768; Wan: UMT5 1×512×4096 for the prompt and the negative prompt; SD3: CLIP-L/G + T5 1×333×4096 + pooled 1×2048 for
both; Wan2.2 as Wan; Qwen-Image: Qwen2.5-VL 1×128×3584 with its mask, for both), as `BottleneckSampler` itself
passes them, so the times leave out text encoding (the same for stock and
bottleneck).

Generation is the stock pipeline call (Flux-dev 1024², 50 steps, guidance 3.5 as a guidance embedding: one transformer
pass per step; Wan 81 frames 480×832, 50 steps, guidance 5.0: two passes per step, conditional and unconditional;
SD3-medium 1024², 28 steps, guidance 7.0: one batch-2 pass per step) against `BottleneckSampler.from_preset`
(flux-3x; wan-3x, wan-2x; sd3-2x) and wan-3x with `enable_sparse_attention(pipe, SparseAttentionConfig(density=0.05))`
(the engine's defaults otherwise), bf16, batch 1. "Denoise" is the wall time of the call with `output_type="latent"`
(every transformer pass, the scheduler, the sampler's latent resizing and re-noising), the median of the repeats after
one untimed warm-up; the warm-up runs each stage for a few steps at the
real sizes (nothing is compiled there), except with sparse attention, where it is a whole generation (FlexAttention,
where it runs, compiles for each stage resolution and the cached SparseD patterns are computed; they are reused by the
timed runs, as the engine reuses them across generations). "With decode" adds the real-size VAE decode and
post-processing of the final latents (the pipeline's own decode path: PIL for Flux, numpy for Wan), timed separately
once per model (median of the repeats after a warm-up) on the stock run's latents, since every variant decodes the same
final size. Each row also gives the seconds spent inside transformer calls and, per input size (one per stage), the
median time per call from CUDA events around each call (`CallTimes`): what a stage costs, and what lies between the
calls. Speed-ups are stock time / variant time, both from this run. A case that fails (out of memory, an error)
leaves an error string in its rows and the run goes on; e2e-<gpu>.json and .md are rewritten after every row, so a run
cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...errors import RunError
from ...families import family_for_pipeline
from .. import measure, script
from ..measure import error_text, free, peak_gib, peak_reset, timed
from ..results import close_run, environment, fmt
from .models import (
    FLUX_DEV_SCHEDULER,
    FLUX_DEV_TRANSFORMER,
    FLUX_DEV_VAE,
    SD3_MEDIUM_TRANSFORMER,
    SD3_SCHEDULER,
    SD3_VAE,
    WAN_1_3B_TRANSFORMER,
    WAN_SCHEDULER,
    WAN_VAE,
    build_pipeline,
    prompt_inputs,
)
from .options import (
    CASES,
    COMPILE_OPTIONS,
    NO_CUDA_MESSAGE,
    TIMING_DEFINITION,
    Case,
    E2EOptions,
    add_arguments,
    effective_case,
    options_from_args,
    variant_parts,
)
from .report import evaluate_targets, finish_case, output_stem, write_outputs

# ---- one generation -----------------------------------------------------------------------------------------------


def variant_stages(variant: str, case: Case) -> list | None:
    """The variant's Bottleneck Sampling stages (Tian et al., 2025), step counts scaled like the stock steps; None for
    stock."""
    from ...families import family_named
    from ...pipelines.bottleneck import Stage
    from ...pipelines.bottleneck_presets import PRESETS

    preset = variant_parts(variant)[0]
    if preset == "stock":
        return None
    family, rows = PRESETS[preset]
    factor = case.steps / family_named(family).stock_steps  # presets are set against their family's stock steps
    return [Stage(scale, max(1, round(steps * factor)), strength, shift)
            for scale, steps, strength, shift in rows]  # fmt: skip


def _call(pipe: object, case: Case, stages: list | None, steps_cap: int | None, inputs: dict, seed: int,
          device: torch.device) -> object:  # fmt: skip
    """One generation to latents: the stock call, or the sampler over `stages` (steps capped for a warm-up)."""
    from ...pipelines.bottleneck import BottleneckSampler

    kwargs = dict(inputs, height=case.height, width=case.width, generator=torch.Generator(device).manual_seed(seed),
                  output_type="latent")  # fmt: skip
    if case.guidance_arg:
        kwargs[case.guidance_arg] = case.guidance_scale
    if case.frames is not None:
        kwargs["num_frames"] = case.frames
    if stages is None:
        steps = case.steps if steps_cap is None else min(case.steps, steps_cap)
        return pipe(num_inference_steps=steps, **kwargs)
    if steps_cap is not None:
        stages = [dataclasses.replace(s, steps=min(s.steps, steps_cap)) for s in stages]
    return BottleneckSampler(pipe, stages)(**kwargs)


def _latents(out: object) -> torch.Tensor:
    """The latents of a pipeline output called with output_type='latent'."""
    return out.frames if hasattr(out, "frames") else out.images


@torch.no_grad()
def decode(pipe: object, latents: torch.Tensor, case: Case) -> object:
    """The stock pipeline's own decode path of its final latents (Flux: unpack, VAE, PIL; SD3: VAE, PIL; Wan: VAE,
    numpy)."""
    vae = pipe.vae
    if case.model == "flux2":  # tokens → patchified grid, the VAE's batch-norm statistics undone, unpatchified
        family = family_for_pipeline(pipe, "bottleneck")
        x = pipe._patchify_latents(family.latents.to_grid(pipe, latents, case.height, case.width, None))
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(x.device, x.dtype)
        image = vae.decode(pipe._unpatchify_latents(x * std + mean), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")
    if case.model == "hunyuan-video15":
        video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="np")
    if case.model == "qwen-image":  # packed (B, N, 64) → (B, 16, 1, H/8, W/8), the VAE's latent statistics undone
        x = pipe._unpack_latents(latents, case.height, case.width, pipe.vae_scale_factor).to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
        image = vae.decode(x * std + mean, return_dict=False)[0][:, :, 0]  # (B, 3, H, W)
        return pipe.image_processor.postprocess(image, output_type="pil")
    if case.model in ("flux", "sd3"):
        x = latents
        if case.model == "flux":  # packed (B, N, 64) → (B, 16, H/8, W/8)
            x = pipe._unpack_latents(latents, case.height, case.width, pipe.vae_scale_factor)
        x = (x / vae.config.scaling_factor) + vae.config.shift_factor
        return pipe.image_processor.postprocess(vae.decode(x, return_dict=False)[0], output_type="pil")
    x = latents.to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
    return pipe.video_processor.postprocess_video(vae.decode(x / inv_std + mean, return_dict=False)[0], "np")


class CallTimes:
    """Every forward of the modules inside the block (a pipeline's denoisers: Wan 2.2's two experts): its input size
    and its time (CUDA events on a GPU, wall on a CPU).

    The events span the GPU's work for the call, including any wait for the host to issue it (a call too small to
    keep the GPU busy shows its host time). `summary` says where a generation's seconds went: inside transformer
    calls, per input size (Bottleneck Sampling's stages), vs everything between them (scheduler, resampling, setup).
    """

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.modules, self.calls, self._open, self.handles = modules, [], [], []

    def __enter__(self) -> CallTimes:
        for module in self.modules:
            self.handles += [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                             module.register_forward_hook(self._post)]  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _mark(self, device: torch.device) -> object:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        size = "x".join(map(str, hidden.shape[1:])) if isinstance(hidden, torch.Tensor) else "?"
        device = hidden.device if isinstance(hidden, torch.Tensor) else torch.device("cpu")
        self._open.append((size, device, self._mark(device)))

    def _post(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        size, device, start = self._open.pop()
        self.calls.append((size, start, self._mark(device)))

    def summary(self, generations: int) -> tuple[float, dict[str, dict]]:
        """(transformer seconds per generation, {input size: {calls, ms_per_call (median)}} per generation)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        per_size: dict[str, list[float]] = {}
        for size, start, end in self.calls:
            ms = start.elapsed_time(end) if hasattr(start, "elapsed_time") else (end - start) * 1e3
            per_size.setdefault(size, []).append(ms)
        total = sum(sum(v) for v in per_size.values()) / 1e3 / max(1, generations)
        sizes = {size: {"calls": len(v) // max(1, generations), "ms_per_call": round(statistics.median(v), 2)}
                 for size, v in per_size.items()}  # fmt: skip
        return total, sizes


def _new_row(case: Case, variant: str, stages: list | None) -> dict:
    """A row with every key present (None until measured)."""
    preset, sparse, compiled = variant_parts(variant)
    steps = [s.steps for s in stages] if stages else [case.steps]
    return {
        "case": case.name, "model": case.model, "variant": variant, "preset": preset,
        "sparse": dict(case.sparse) if sparse else None, "compiled": COMPILE_OPTIONS if compiled else None,
        "stages": [dataclasses.asdict(s) for s in stages] if stages else None, "steps": steps,
        "height": case.height, "width": case.width, "frames": case.frames, "guidance_scale": case.guidance_scale,
        "transformer_calls": None, "repeats": case.repeats, "times_s": [], "denoise_s": None, "warmup_s": None,
        "warmup": None, "decode_s": None, "total_s": None, "speedup_denoise": None, "speedup_total": None,
        "peak_gib": None, "patterns_computed_timed": None, "stock_from": None, "error": None,
        "transformer_s": None, "per_size": None,
    }  # fmt: skip


def measure_variant(pipe: object, case: Case, variant: str, options: E2EOptions, device: torch.device,
                    log: Callable[[str], None] = measure.log) -> tuple[dict, torch.Tensor | None]:  # fmt: skip
    """Warm up then time one variant's generations (stock or Bottleneck Sampling, Tian et al. 2025); the row and the
    last latents. Errors land in the row."""
    from ...attention_processors import SparseAttentionConfig, disable_sparse_attention, enable_sparse_attention
    from ...attention_processors.enable import denoisers_of

    stages = None
    row = _new_row(case, variant, None)
    latents = None
    handle = None
    compiled: list[torch.nn.Module] = []
    try:
        stages = variant_stages(variant, case)
        row = _new_row(case, variant, stages)
        inputs = prompt_inputs(pipe, case, device, options.seed)
        if row["sparse"] is not None:
            handle = enable_sparse_attention(pipe, SparseAttentionConfig(**case.sparse))
        if row["compiled"] is not None:  # after sparse attention: its processors are what the graphs trace
            compiled = compile_denoisers(pipe)
        cap = None if handle is not None or options.warmup_steps == 0 else options.warmup_steps
        row["warmup"] = "whole generation" if cap is None else f"{cap} step(s) per stage"
        peak_reset(device)
        row["warmup_s"], out = timed(lambda: _call(pipe, case, stages, cap, inputs, options.seed, device), device)
        del out
        before = sum(handle.pattern_computations.values()) if handle is not None else None
        with CallTimes(*denoisers_of(pipe).values()) as calls:
            for i in range(case.repeats):
                seconds, out = timed(lambda: _call(pipe, case, stages, None, inputs, options.seed, device), device)
                row["times_s"].append(seconds)
                latents = _latents(out)
                del out
                log(f"{case.name} {variant}: run {i + 1}/{case.repeats} {seconds:.2f} s")
        row["transformer_calls"] = len(calls.calls) // case.repeats
        row["transformer_s"], row["per_size"] = calls.summary(case.repeats)
        row["denoise_s"] = statistics.median(row["times_s"])
        row["peak_gib"] = peak_gib(device)
        if handle is not None:
            row["patterns_computed_timed"] = sum(handle.pattern_computations.values()) - before
    except Exception as e:  # noqa: BLE001 — out of memory, a failing variant: recorded, the run goes on
        row["error"] = error_text(e)
        latents = None
        log(f"{case.name} {variant}: {row['error']}")
    finally:
        if compiled:
            uncompile(compiled)
        if handle is not None:
            with contextlib.suppress(Exception):
                disable_sparse_attention(pipe)
        free(device)
    return row, latents


def compile_denoisers(pipe: object) -> list[torch.nn.Module]:
    """`compile_repeated_blocks(**COMPILE_OPTIONS)` on every denoiser of the pipeline (diffusers' regional compile);
    the modules it compiled, for `uncompile`."""
    from ...attention_processors.enable import denoisers_of

    compiled = []
    for model in denoisers_of(pipe).values():
        model.compile_repeated_blocks(**COMPILE_OPTIONS)
        compiled += [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    if not compiled:
        raise RuntimeError("compile_repeated_blocks compiled no block of this pipeline's denoiser")
    return compiled


def uncompile(modules: list[torch.nn.Module]) -> None:
    """Undo `nn.Module.compile` on `modules` and drop Dynamo's caches (the next variant runs eagerly)."""
    for module in modules:
        module._compiled_call_impl = None
    torch._dynamo.reset()


def measure_decode(pipe: object, latents: torch.Tensor, case: Case, device: torch.device) -> dict:
    """The VAE decode of a final latent (warm-up + the case's repeats, median): {decode_s, times_s, error}."""
    result: dict = {"case": case.name, "model": case.model, "decode_s": None, "times_s": [], "error": None}
    try:
        timed(lambda: decode(pipe, latents, case), device)
        for _ in range(case.repeats):
            result["times_s"].append(timed(lambda: decode(pipe, latents, case), device)[0])
        result["decode_s"] = statistics.median(result["times_s"])
    except Exception as e:  # noqa: BLE001 — e.g. out of memory in the VAE: the denoise times stand
        result["error"] = error_text(e)
    free(device)
    return result


# ---- running ------------------------------------------------------------------------------------------------------


def _environment(device: torch.device, command: str, options: E2EOptions) -> dict:
    """Versions, device and definitions: the JSON header."""
    real, _, rest = __doc__.partition("What is real-size: ")[2].partition("\n\nWhat is not: ")
    return {
        **environment("end-to-end", command, device, ("diffusers", "triton")),
        "dtype": "bfloat16", "batch": 1, "options": dataclasses.asdict(options), "cases": list(options.cases),
        "timing": TIMING_DEFINITION, "real_size": " ".join(real.split()),
        "not_real_size": " ".join(rest.partition("\n\n")[0].split()),
        "configs": {"flux_transformer": FLUX_DEV_TRANSFORMER, "flux_vae": FLUX_DEV_VAE,
                    "flux_scheduler": FLUX_DEV_SCHEDULER, "wan_transformer": WAN_1_3B_TRANSFORMER, "wan_vae": WAN_VAE,
                    "wan_scheduler": ("UniPCMultistepScheduler", WAN_SCHEDULER),
                    "sd3_transformer": SD3_MEDIUM_TRANSFORMER, "sd3_vae": SD3_VAE, "sd3_scheduler": SD3_SCHEDULER},
        "rows": [], "decode": {}, "targets": [],
    }  # fmt: skip


def run_cases(
    cases: Sequence[Case], options: E2EOptions, device: str | torch.device,
    pipelines: dict[str, object] | Callable[[str], object], results: dict,
    on_update: Callable[[dict], None] = lambda results: None, log: Callable[[str], None] = measure.log,
) -> dict:  # fmt: skip
    """Every case's variants on the given pipelines (a dict, or a builder called once per model); fills `results`.

    Bottleneck Sampling (Tian et al., 2025) vs stock, same run. The same code runs on the GPU and in the CPU tests.
    """
    device = torch.device(device)
    stock_cache: dict[tuple, tuple[dict, torch.Tensor | None]] = {}  # stock rows by (model, request), reused
    decode_cache: dict[tuple, dict] = {}
    models = list(dict.fromkeys(c.model for c in cases))
    for model in models:
        pipe, build_error = None, None
        try:
            pipe = pipelines[model] if isinstance(pipelines, dict) else pipelines(model)
        except Exception as e:  # noqa: BLE001 — out of memory building the model: every row of its cases says so
            build_error = f"building the {model} pipeline: {error_text(e)}"
            log(build_error)
        for case in (c for c in cases if c.model == model):
            rows: list[dict] = []
            key = (model, case.height, case.width, case.frames, case.steps, case.guidance_scale, case.repeats)
            latents = None
            for variant in case.variants:
                if build_error is not None:
                    row = _new_row(case, variant, None)
                    row["error"] = build_error
                elif variant == "stock" and key in stock_cache:
                    row, latents = dict(stock_cache[key][0]), stock_cache[key][1]
                    row.update(case=case.name, stock_from=stock_cache[key][0]["case"])
                else:
                    row, last = measure_variant(pipe, case, variant, options, device, log)
                    if variant == "stock":
                        latents = last
                        if row["error"] is None:
                            stock_cache[key] = (dict(row), last)
                rows.append(row)
                results["rows"].append(row)
                finish_case(rows, None)
                results["targets"] = evaluate_targets(results["rows"])
                on_update(results)
            decode_s = None
            if options.decode and build_error is None:
                if key not in decode_cache and latents is not None:
                    decode_cache[key] = measure_decode(pipe, latents, case, device)
                    done = decode_cache[key]
                    log(f"{case.name} decode: {fmt(done['decode_s'])} s {done['error'] or ''}")
                elif key not in decode_cache:
                    decode_cache[key] = {"case": case.name, "model": model, "decode_s": None, "times_s": [],
                                         "error": "no stock latents to decode (the stock run failed)"}  # fmt: skip
                results["decode"][case.name] = decode_cache[key]
                decode_s = decode_cache[key]["decode_s"]
            finish_case(rows, decode_s)
            results["targets"] = evaluate_targets(results["rows"])
            on_update(results)
            for r in rows:
                log(f"{case.name} {r['variant']}: denoise {fmt(r['denoise_s'])} s "
                    f"({fmt(r['speedup_denoise'], 2, '×')}), with decode {fmt(r['total_s'])} s "
                    f"({fmt(r['speedup_total'], 2, '×')}){' ' + r['error'] if r['error'] else ''}")  # fmt: skip
        if not isinstance(pipelines, dict):
            del pipe  # the next model gets the memory
        stock_cache = {k: v for k, v in stock_cache.items() if k[0] != model}
        free(device)
    return results


def run_benchmark(
    options: E2EOptions, out_dir: str | Path, command: str, device: str | torch.device = "cuda",
    pipelines: dict[str, object] | None = None, cases: Sequence[Case] | None = None,
    log: Callable[[str], None] = measure.log,
) -> dict:  # fmt: skip
    """Measure the chosen cases of Bottleneck Sampling (Tian et al., 2025) vs stock; outputs rewritten after each
    row. `pipelines` and `cases` replace the real-size ones (the CPU tests pass tiny fixtures)."""
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _environment(device, command, options)
    cases = list(cases) if cases is not None else [effective_case(CASES[name], options) for name in options.cases]
    results["cases"] = [c.name for c in cases]
    start = time.perf_counter()
    write_outputs(results, out_dir)
    builder = pipelines if pipelines is not None else (lambda model: build_pipeline(model, device))
    run_cases(cases, options, device, builder, results, on_update=lambda r: write_outputs(r, out_dir), log=log)
    close_run(results, start, lambda r: write_outputs(r, out_dir), log)
    return results


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench e2e` (Bottleneck Sampling, Tian et al. 2025): refuse without CUDA (exit 2), run, exit 1 if a
    row failed."""
    results = script.run_and_print(args, command, NO_CUDA_MESSAGE, options_from_args, run_benchmark,
                                   lambda r: f"{output_stem(r)}.md")  # fmt: skip
    failed = [f"{r['case']}/{r['variant']}" for r in results["rows"] if r["error"]]
    if failed:
        raise RunError(f"{len(failed)} variant(s) failed (errors in the report): {', '.join(failed)}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of bench/e2e.py: -o plus the e2e options."""
    return script.build_parser(prog, __doc__.splitlines()[0], add_arguments)


def main(argv: list[str] | None = None, prog: str = "bench/e2e.py") -> int:
    """Entry point of bench/e2e.py; returns the exit code (2 without CUDA, 1 if a variant failed)."""
    return script.script_main(argv, prog, build_parser(prog), run_from_cli)

"""End-to-end benchmark (issue #6): whole-generation wall time, stock vs Bottleneck Sampling (Tian et al., 2025),
alone and with sparse attention, measured in the same run on random-weight real-size pipelines.

    unbottle bench e2e -o bench/results          # or: python bench/e2e.py -o bench/results   (a CUDA GPU)

What is real-size: the denoiser and the VAE. FLUX.1-dev's `FluxTransformer2DModel` (19 double + 38 single blocks,
3072 = 24 heads × 128, T5 width 4096, CLIP pooled 768, guidance embedding; 11.9B parameters) with its 16-channel
`AutoencoderKL` (83.8M) and its scheduler (FlowMatchEuler, dynamic shift); Wan2.1-T2V-1.3B's `WanTransformer3DModel`
(30 layers, 1536 = 12 heads × 128, FFN 8960; 1.42B parameters, the checkpoint's count behind the "1.3B" name) with
`AutoencoderKLWan` (127M) and the scheduler the Diffusers checkpoint ships (UniPC, flow prediction, flow shift 3);
Stable Diffusion 3 medium's `SD3Transformer2DModel` (24 joint blocks, 1536 = 24 heads × 64, patch 2; 2.03B parameters)
with its 16-channel `AutoencoderKL` and scheduler (FlowMatchEuler, static shift 3).
Weights are random (speed does not depend on them) and built on the GPU from these configs: nothing is downloaded.

What is not: text encoding. The pipelines carry the tiny test text encoders (`unbottle.testing`), which are never
called: each generation gets precomputed random `prompt_embeds` of the real shape (Flux: T5 1×512×4096 + pooled CLIP
1×768; Wan: UMT5 1×512×4096 for the prompt and the negative prompt; SD3: CLIP-L/G + T5 1×333×4096 + pooled 1×2048 for
both), as `BottleneckSampler` itself passes them, so the times leave out text encoding (the same for stock and
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
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import script
from .attention import _error_text, _free, _git_commit, _log, _sync, gpu_tag
from .script import parse_names, share_quick_and_seed

NO_CUDA_MESSAGE = "the end-to-end benchmark needs a CUDA GPU; torch sees none here"
TEXT_TOKENS = 512  # Flux's and Wan's `max_sequence_length` default: T5/UMT5 embeddings of 512 tokens
SD3_TEXT_TOKENS = 77 + 256  # SD3: CLIP-L/G's 77 tokens joined with T5's 256 (its `max_sequence_length` default)

# ---- real-size configs (FLUX.1-dev, Wan2.1-T2V-1.3B-Diffusers) --------------------------------------------------
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56],
)  # fmt: skip
FLUX_DEV_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
WAN_1_3B_TRANSFORMER = dict(
    patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)  # fmt: skip
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)  # fmt: skip
WAN_SCHEDULER = dict(  # the Diffusers checkpoint's scheduler_config.json (UniPCMultistepScheduler)
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=2,
    solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
)  # fmt: skip

SD3_MEDIUM_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)  # fmt: skip
SD3_VAE = dict(FLUX_DEV_VAE, scaling_factor=1.5305, shift_factor=0.0609)  # the same architecture, SD3's constants
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)

# ---- cases --------------------------------------------------------------------------------------------------------
SPARSE = "+sparse"  # a variant name ending in it runs with sparse attention enabled


@dataclass(frozen=True)
class Case:
    """One comparison: a model at one request size, its stock run and the Bottleneck Sampling variants against it."""

    name: str
    model: str  # "flux", "wan" or "sd3": which pipeline
    variants: tuple[str, ...]  # "stock", a preset name, or a preset name + "+sparse"
    height: int
    width: int
    frames: int | None  # video frames (None for images)
    steps: int  # the stock pipeline's steps
    guidance_scale: float
    repeats: int
    text_tokens: int = TEXT_TOKENS
    sparse: dict = field(default_factory=lambda: {"density": 0.05})  # SparseAttentionConfig keywords


CASES: dict[str, Case] = {
    "flux": Case("flux", "flux", ("stock", "flux-3x"), 1024, 1024, None, 50, 3.5, repeats=3),
    "wan": Case("wan", "wan", ("stock", "wan-3x", "wan-2x"), 480, 832, 81, 50, 5.0, repeats=2),
    "wan-sparse": Case("wan-sparse", "wan", ("stock", "wan-3x" + SPARSE), 480, 832, 81, 50, 5.0, repeats=2),
    "sd3": Case("sd3", "sd3", ("stock", "sd3-2x"), 1024, 1024, None, 28, 7.0, repeats=3, text_tokens=SD3_TEXT_TOKENS),
}
DEFAULT_CASES: tuple[str, ...] = ("flux", "wan", "wan-sparse", "sd3")
QUICK_STEPS, QUICK_FRAMES, QUICK_REPEATS = 10, 33, 1  # --quick: stages scaled by QUICK_STEPS / steps
WARMUP_STEPS = 2  # steps per stage of the warm-up of variants that compile nothing
# issue #6's targets: (case, variant, minimum speed-up over stock, whole generation where decode was measured)
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("flux", "flux-3x", 2.8), ("wan", "wan-3x", 2.5), ("wan-sparse", "wan-3x" + SPARSE, 6.0),
)  # fmt: skip
TIMING_DEFINITION = (
    "wall time (time.perf_counter around the call, CUDA synchronized before and after) of one generation with "
    "output_type='latent'; median of the repeats after one untimed warm-up (a few steps per stage at the real sizes, "
    "or a whole generation where sparse attention compiles). Decode: the pipeline's own VAE decode + post-processing "
    "of the stock run's final latents, median of the repeats after a warm-up, added to every variant's denoise time."
)


@dataclass
class E2EOptions:
    """What to run: cases, repeats (None: each case's own), warm-up, decode, seed, quick (fewer steps and frames)."""

    cases: list[str] = field(default_factory=lambda: list(DEFAULT_CASES))
    repeats: int | None = None
    warmup_steps: int = WARMUP_STEPS  # 0: every warm-up is a whole generation
    decode: bool = True
    seed: int = 0
    quick: bool = False


# ---- arguments ----------------------------------------------------------------------------------------------------


def parse_cases(text: str) -> list[str]:
    """Case names, comma-separated, from CASES (Bottleneck Sampling, Tian et al. 2025, comparisons)."""
    return parse_names(text, CASES, "--cases")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The end-to-end benchmark's options for Bottleneck Sampling (Tian et al., 2025); --quick/--seed are shared."""
    quick = f"e2e: {QUICK_STEPS} steps (stages scaled alike), {QUICK_FRAMES} frames, {QUICK_REPEATS} repeat"
    seed = "e2e: seed of the noise and prompt embeddings"
    share_quick_and_seed(parser, quick, seed)
    parser.add_argument("--cases", type=parse_cases, metavar="C,...",
                        help=f"e2e: cases to run, of {', '.join(CASES)} (default all)")  # fmt: skip
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="e2e: timed generations per variant (default: flux and sd3 3, wan 2)")  # fmt: skip
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS, metavar="N",
                        help=f"e2e: steps per stage of the warm-up where nothing compiles (default {WARMUP_STEPS}; "
                        "0: whole generations)")  # fmt: skip
    parser.add_argument("--no-decode", action="store_true", help="e2e: skip the VAE decode timing")


def options_from_args(args: argparse.Namespace) -> E2EOptions:
    """E2EOptions from parsed arguments (`unbottle bench e2e` or bench/e2e.py)."""
    from ..cli.errors import UsageError

    repeats = getattr(args, "repeats", None)
    warmup = getattr(args, "warmup_steps", WARMUP_STEPS)
    if repeats is not None and repeats < 1:
        raise UsageError(f"--repeats must be ≥ 1, got {repeats}")
    if warmup is None or warmup < 0:
        raise UsageError(f"--warmup-steps must be ≥ 0, got {warmup}")
    return E2EOptions(
        cases=getattr(args, "cases", None) or list(DEFAULT_CASES), repeats=repeats, warmup_steps=warmup,
        decode=not getattr(args, "no_decode", False), seed=getattr(args, "seed", 0) or 0,
        quick=getattr(args, "quick", False),
    )  # fmt: skip


def effective_case(case: Case, options: E2EOptions) -> Case:
    """The case as run: --quick's steps, frames and repeats, then --repeats."""
    if options.quick:
        frames = min(case.frames, QUICK_FRAMES) if case.frames else case.frames
        case = dataclasses.replace(case, steps=min(case.steps, QUICK_STEPS), frames=frames, repeats=QUICK_REPEATS)
    if options.repeats is not None:
        case = dataclasses.replace(case, repeats=options.repeats)
    return case


# ---- models -------------------------------------------------------------------------------------------------------


def flux_dev_transformer() -> torch.nn.Module:
    """FLUX.1-dev's transformer at its real shape (random weights), built on the current default device."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)


def wan_1_3b_transformer() -> torch.nn.Module:
    """Wan2.1-T2V-1.3B's transformer at its real shape (random weights), built on the current default device."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**WAN_1_3B_TRANSFORMER)


def sd3_medium_transformer() -> torch.nn.Module:
    """Stable Diffusion 3 medium's MMDiT at its real shape (random weights), built on the current default device."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**SD3_MEDIUM_TRANSFORMER)


def flux_dev_vae() -> torch.nn.Module:
    """FLUX.1's 16-channel VAE at its real shape (random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**FLUX_DEV_VAE)


def wan_vae() -> torch.nn.Module:
    """Wan2.1's video VAE at its real shape (random weights)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**WAN_VAE)


def build_pipeline(model: str, device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> object:
    """A real-size random-weight FluxPipeline, WanPipeline or StableDiffusion3Pipeline (tiny unused text encoders) for
    the benchmark of Bottleneck Sampling (Tian et al., 2025)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusion3Pipeline,
        UniPCMultistepScheduler,
        WanPipeline,
    )

    from ..testing import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline

    with torch.device(device):  # random init on the GPU: seconds instead of minutes of CPU init
        if model == "flux":
            tiny = tiny_flux_pipeline()
            pipe = FluxPipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), vae=flux_dev_vae(),
                text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, text_encoder_2=tiny.text_encoder_2,
                tokenizer_2=tiny.tokenizer_2, transformer=flux_dev_transformer(),
            )  # fmt: skip
        elif model == "wan":
            tiny = tiny_wan_pipeline()
            pipe = WanPipeline(
                tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=wan_vae(),
                transformer=wan_1_3b_transformer(), scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER),
            )  # fmt: skip
        elif model == "sd3":
            tiny = tiny_sd3_pipeline()
            pipe = StableDiffusion3Pipeline(
                transformer=sd3_medium_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
                vae=AutoencoderKL(**SD3_VAE), text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                text_encoder_2=tiny.text_encoder_2, tokenizer_2=tiny.tokenizer_2, text_encoder_3=tiny.text_encoder_3,
                tokenizer_3=tiny.tokenizer_3,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown model {model!r}: flux, wan or sd3")
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cast_like_from_pretrained(component, dtype)
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cast_like_from_pretrained(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Floating tensors to `dtype`, except `_keep_in_fp32_modules` (Wan: time embedder, norms, RoPE), which stay fp32
    as `from_pretrained(torch_dtype=...)` keeps them."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep.intersection(name.split(".")) else dtype)
    return module


def prompt_inputs(pipe: object, case: Case, device: torch.device, seed: int) -> dict:
    """Random precomputed prompt embeddings of the real shape, in the keywords the stock pipeline takes."""
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(seed + 1)
    dtype = pipe.transformer.dtype

    def embeds(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    if case.model == "flux":
        return {"prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "pooled_prompt_embeds": embeds(1, config.pooled_projection_dim)}  # fmt: skip
    if case.model == "sd3":
        return {"prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "pooled_prompt_embeds": embeds(1, config.pooled_projection_dim),
                "negative_prompt_embeds": embeds(1, case.text_tokens, config.joint_attention_dim),
                "negative_pooled_prompt_embeds": embeds(1, config.pooled_projection_dim)}  # fmt: skip
    return {"prompt_embeds": embeds(1, case.text_tokens, config.text_dim),
            "negative_prompt_embeds": embeds(1, case.text_tokens, config.text_dim)}  # fmt: skip


# ---- one generation -----------------------------------------------------------------------------------------------


def variant_stages(variant: str, case: Case) -> list | None:
    """The variant's Bottleneck Sampling stages (Tian et al., 2025), step counts scaled like the stock steps; None for
    stock."""
    from ..pipelines.bottleneck import Stage
    from ..pipelines.bottleneck_presets import PRESETS, STOCK_STEPS

    preset = variant.removesuffix(SPARSE)
    if preset == "stock":
        return None
    family, rows = PRESETS[preset]
    factor = case.steps / STOCK_STEPS[family]  # presets are set against their family's stock steps (50; SD3 28)
    return [Stage(scale, max(1, round(steps * factor)), strength, shift)
            for scale, steps, strength, shift in rows]  # fmt: skip


def _call(pipe: object, case: Case, stages: list | None, steps_cap: int | None, inputs: dict, seed: int,
          device: torch.device) -> object:  # fmt: skip
    """One generation to latents: the stock call, or the sampler over `stages` (steps capped for a warm-up)."""
    from ..pipelines.bottleneck import BottleneckSampler

    kwargs = dict(inputs, height=case.height, width=case.width, guidance_scale=case.guidance_scale,
                  generator=torch.Generator(device).manual_seed(seed), output_type="latent")  # fmt: skip
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


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of one call, the device synchronized before and after; and its result."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


class CallTimes:
    """Every forward of a module inside the block: its input size and its time (CUDA events on a GPU, wall on a CPU).

    The events span the GPU's work for the call, including any wait for the host to issue it (a call too small to
    keep the GPU busy shows its host time). `summary` says where a generation's seconds went: inside transformer
    calls, per input size (Bottleneck Sampling's stages), vs everything between them (scheduler, resampling, setup).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.calls, self._open, self.handles = module, [], [], []

    def __enter__(self) -> CallTimes:
        self.handles = [self.module.register_forward_pre_hook(self._pre, with_kwargs=True),
                        self.module.register_forward_hook(self._post)]  # fmt: skip
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


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _new_row(case: Case, variant: str, stages: list | None) -> dict:
    """A row with every key present (None until measured)."""
    sparse = variant.endswith(SPARSE)
    steps = [s.steps for s in stages] if stages else [case.steps]
    return {
        "case": case.name, "model": case.model, "variant": variant, "preset": variant.removesuffix(SPARSE),
        "sparse": dict(case.sparse) if sparse else None,
        "stages": [dataclasses.asdict(s) for s in stages] if stages else None, "steps": steps,
        "height": case.height, "width": case.width, "frames": case.frames, "guidance_scale": case.guidance_scale,
        "transformer_calls": None, "repeats": case.repeats, "times_s": [], "denoise_s": None, "warmup_s": None,
        "warmup": None, "decode_s": None, "total_s": None, "speedup_denoise": None, "speedup_total": None,
        "peak_gib": None, "patterns_computed_timed": None, "stock_from": None, "error": None,
        "transformer_s": None, "per_size": None,
    }  # fmt: skip


def measure_variant(pipe: object, case: Case, variant: str, options: E2EOptions, device: torch.device,
                    log: Callable[[str], None] = _log) -> tuple[dict, torch.Tensor | None]:  # fmt: skip
    """Warm up then time one variant's generations (stock or Bottleneck Sampling, Tian et al. 2025); the row and the
    last latents. Errors land in the row."""
    import unbottle

    stages = None
    row = _new_row(case, variant, None)
    latents = None
    handle = None
    try:
        stages = variant_stages(variant, case)
        row = _new_row(case, variant, stages)
        inputs = prompt_inputs(pipe, case, device, options.seed)
        if row["sparse"] is not None:
            handle = unbottle.enable_sparse_attention(pipe, unbottle.SparseAttentionConfig(**case.sparse))
        cap = None if handle is not None or options.warmup_steps == 0 else options.warmup_steps
        row["warmup"] = "whole generation" if cap is None else f"{cap} step(s) per stage"
        _peak_reset(device)
        row["warmup_s"], out = _timed(lambda: _call(pipe, case, stages, cap, inputs, options.seed, device), device)
        del out
        before = sum(handle.pattern_computations.values()) if handle is not None else None
        with CallTimes(pipe.transformer) as calls:
            for i in range(case.repeats):
                seconds, out = _timed(lambda: _call(pipe, case, stages, None, inputs, options.seed, device), device)
                row["times_s"].append(seconds)
                latents = _latents(out)
                del out
                log(f"{case.name} {variant}: run {i + 1}/{case.repeats} {seconds:.2f} s")
        row["transformer_calls"] = len(calls.calls) // case.repeats
        row["transformer_s"], row["per_size"] = calls.summary(case.repeats)
        row["denoise_s"] = statistics.median(row["times_s"])
        row["peak_gib"] = _peak_gib(device)
        if handle is not None:
            row["patterns_computed_timed"] = sum(handle.pattern_computations.values()) - before
    except Exception as e:  # noqa: BLE001 — out of memory, a failing variant: recorded, the run goes on
        row["error"] = _error_text(e)
        latents = None
        log(f"{case.name} {variant}: {row['error']}")
    finally:
        if handle is not None:
            with contextlib.suppress(Exception):
                unbottle.disable_sparse_attention(pipe)
        _free(device)
    return row, latents


def measure_decode(pipe: object, latents: torch.Tensor, case: Case, device: torch.device) -> dict:
    """The VAE decode of a final latent (warm-up + the case's repeats, median): {decode_s, times_s, error}."""
    result: dict = {"case": case.name, "model": case.model, "decode_s": None, "times_s": [], "error": None}
    try:
        _timed(lambda: decode(pipe, latents, case), device)
        for _ in range(case.repeats):
            result["times_s"].append(_timed(lambda: decode(pipe, latents, case), device)[0])
        result["decode_s"] = statistics.median(result["times_s"])
    except Exception as e:  # noqa: BLE001 — e.g. out of memory in the VAE: the denoise times stand
        result["error"] = _error_text(e)
    _free(device)
    return result


# ---- results: ratios, targets, markdown ---------------------------------------------------------------------------


def speedup(stock_s: float | None, variant_s: float | None) -> float | None:
    """Stock seconds / variant seconds, or None where either is missing."""
    return stock_s / variant_s if stock_s and variant_s else None


def finish_case(rows: list[dict], decode_s: float | None) -> list[dict]:
    """Fill total_s (denoise + decode) and the speed-ups vs the case's stock row (Bottleneck Sampling, Tian et al.
    2025)."""
    stock = next((r for r in rows if r["variant"] == "stock"), None)
    for row in rows:
        row["decode_s"] = decode_s
        row["total_s"] = row["denoise_s"] + decode_s if row["denoise_s"] is not None and decode_s else None
        base = stock or {}
        row["speedup_denoise"] = speedup(base.get("denoise_s"), row["denoise_s"])
        row["speedup_total"] = speedup(base.get("total_s"), row["total_s"])
    return rows


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """Issue #6's targets: whole generation (with decode) where decode was measured, else denoise only."""
    out = []
    for case, variant, minimum in TARGETS:
        row = next((r for r in rows if r["case"] == case and r["variant"] == variant), None)
        if row is None:
            continue
        basis = "with decode" if row["speedup_total"] is not None else "denoise only"
        value = row["speedup_total"] if row["speedup_total"] is not None else row["speedup_denoise"]
        out.append({"case": case, "variant": variant, "target": minimum, "basis": basis, "value": value,
                    "met": None if value is None else value >= minimum})  # fmt: skip
    return out


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, one table per case (denoise and with decode, speed-ups), targets, errors."""
    lines = [
        f"# End-to-end benchmark, {results.get('gpu', '?')} (bf16, batch 1, random-weight real-size pipelines)",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, diffusers {results.get('diffusers')}, triton {results.get('triton')}, CUDA "
        f"{results.get('cuda')}, unbottle {results.get('unbottle')} ({results.get('git_commit') or 'no git'}); "
        f"{results.get('started', '')}",
        "",
        f"- time: {TIMING_DEFINITION}",
        f"- real-size: {results.get('real_size', '')}",
        f"- not real-size: {results.get('not_real_size', '')}",
        "",
    ]
    for name in results.get("cases", []):
        rows = [r for r in results.get("rows", []) if r["case"] == name]
        if not rows:
            continue
        r0 = rows[0]
        size = f"{r0['height']}×{r0['width']}"
        size = f"{r0['frames']} frames {size}" if r0["frames"] else size
        lines += [
            f"## {name}: {r0['model']}, {size}, guidance {r0['guidance_scale']:g}",
            "",
            "| variant | steps | transformer calls | denoise s | in transformer s | per call ms (input size) | "
            "speed-up | with decode s | speed-up | warm-up s | peak GiB | runs s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            steps = "+".join(map(str, r["steps"])) if r["steps"] else "—"
            runs = ", ".join(f"{t:.2f}" for t in r["times_s"]) or "—"
            note = f" (measured in {r['stock_from']})" if r.get("stock_from") else ""
            per_size = (r.get("per_size") or {}).items()
            sizes = ", ".join(f"{v['calls']} × {v['ms_per_call']:.1f} ({k})" for k, v in per_size)
            lines.append(
                f"| {r['variant']}{note} | {steps} | {r['transformer_calls'] if r['transformer_calls'] else '—'} | "
                f"{_fmt(r['denoise_s'])} | {_fmt(r.get('transformer_s'))} | {sizes or '—'} | "
                f"{_fmt(r['speedup_denoise'], 2, '×')} | {_fmt(r['total_s'])} | "
                f"{_fmt(r['speedup_total'], 2, '×')} | {_fmt(r['warmup_s'], 1)} | {_fmt(r['peak_gib'], 1)} | {runs} |"
            )
        dec = results.get("decode", {}).get(name)
        if dec:
            lines += ["", f"decode: {_fmt(dec['decode_s'])} s{' — ' + dec['error'] if dec['error'] else ''}"]
        lines.append("")
    if results.get("targets"):
        lines += ["## Targets (issue #6)", "", "| case | variant | basis | speed-up | target | met |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for t in results["targets"]:
            met = "—" if t["met"] is None else ("✓" if t["met"] else "✗")
            lines.append(f"| {t['case']} | {t['variant']} | {t['basis']} | {_fmt(t['value'], 2, '×')} | "
                         f"≥ {t['target']:g}× | {met} |")  # fmt: skip
        lines.append("")
    errors = [f"{r['case']} {r['variant']}: {r['error']}" for r in results.get("rows", []) if r.get("error")]
    errors += [f"{name} decode: {d['error']}" for name, d in results.get("decode", {}).items() if d.get("error")]
    if errors:
        lines += ["## Errors", "", *(f"- {e}" for e in errors), ""]
    if results.get("wall_s") is not None:
        lines.append(f"total benchmark wall time {results['wall_s']} s")
    return "\n".join(lines).rstrip() + "\n"


def output_stem(results: dict) -> str:
    """e2e-<gpu>, plus the cases when a subset ran and -quick, so split runs do not overwrite each other."""
    stem = f"e2e-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    cases = results.get("cases") or list(DEFAULT_CASES)
    if list(cases) != list(DEFAULT_CASES):
        stem += "-" + "_".join(cases)  # letters, digits, "-", "_" only: portable file names
    return stem + ("-quick" if results.get("options", {}).get("quick") else "")


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write e2e-<gpu>.json and .md; return {kind: path}."""
    return script.write_json_and_markdown(results, out_dir, output_stem(results), markdown_report(results))


# ---- running ------------------------------------------------------------------------------------------------------


def _environment(device: torch.device, command: str, options: E2EOptions) -> dict:
    """Versions, device and definitions: the JSON header."""
    import diffusers

    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else f"{device.type} ({platform.processor() or 'cpu'})"
    real, _, rest = __doc__.partition("What is real-size: ")[2].partition("\n\nWhat is not: ")
    return {
        "benchmark": "end-to-end (issue #6)", "command": command, "argv": sys.argv, "gpu": gpu,
        "gpu_tag": gpu_tag(gpu),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "triton": triton_version,
        "cuda": torch.version.cuda, "python": platform.python_version(), "unbottle": __version__,
        "git_commit": _git_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
    on_update: Callable[[dict], None] = lambda results: None, log: Callable[[str], None] = _log,
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
            build_error = f"building the {model} pipeline: {_error_text(e)}"
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
                    log(f"{case.name} decode: {_fmt(done['decode_s'])} s {done['error'] or ''}")
                elif key not in decode_cache:
                    decode_cache[key] = {"case": case.name, "model": model, "decode_s": None, "times_s": [],
                                         "error": "no stock latents to decode (the stock run failed)"}  # fmt: skip
                results["decode"][case.name] = decode_cache[key]
                decode_s = decode_cache[key]["decode_s"]
            finish_case(rows, decode_s)
            results["targets"] = evaluate_targets(results["rows"])
            on_update(results)
            for r in rows:
                log(f"{case.name} {r['variant']}: denoise {_fmt(r['denoise_s'])} s "
                    f"({_fmt(r['speedup_denoise'], 2, '×')}), with decode {_fmt(r['total_s'])} s "
                    f"({_fmt(r['speedup_total'], 2, '×')}){' ' + r['error'] if r['error'] else ''}")  # fmt: skip
        if not isinstance(pipelines, dict):
            del pipe  # the next model gets the memory
        stock_cache = {k: v for k, v in stock_cache.items() if k[0] != model}
        _free(device)
    return results


def run_benchmark(
    options: E2EOptions, out_dir: str | Path, command: str, device: str | torch.device = "cuda",
    pipelines: dict[str, object] | None = None, cases: Sequence[Case] | None = None,
    log: Callable[[str], None] = _log,
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
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    paths = write_outputs(results, out_dir)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench e2e` (Bottleneck Sampling, Tian et al. 2025): refuse without CUDA (exit 2), run, exit 1 if a
    row failed."""
    from ..cli.errors import RunError

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

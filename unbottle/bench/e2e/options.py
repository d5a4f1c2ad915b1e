"""What the end-to-end benchmark runs (Bottleneck Sampling, Tian et al. 2025, against the stock pipeline): the cases,
their variants and request sizes, the targets, and its command-line options."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from ...errors import UsageError
from ..script import parse_names

NO_CUDA_MESSAGE = "the end-to-end benchmark needs a CUDA GPU; torch sees none here"
TEXT_TOKENS = 512  # Flux's and Wan's `max_sequence_length` default: T5/UMT5 embeddings of 512 tokens
SD3_TEXT_TOKENS = 77 + 256  # SD3: CLIP-L/G's 77 tokens joined with T5's 256 (its `max_sequence_length` default)
QWEN_TEXT_TOKENS = 128  # Qwen-Image: Qwen2.5-VL states of the prompt after the template (a long prompt; no padding)

# ---- cases --------------------------------------------------------------------------------------------------------
SPARSE = "+sparse"  # a variant name ending in it runs with sparse attention enabled
COMPILED = "@compiled"  # ... and in this one (after any "+sparse") with the denoisers' repeated blocks compiled
COMPILE_OPTIONS = {"fullgraph": True}  # `compile_repeated_blocks` keywords of the compiled variants (tests: aot_eager)


def variant_parts(variant: str) -> tuple[str, bool, bool]:
    """(preset or "stock", sparse attention on, `compile_repeated_blocks` on) of a variant name."""
    compiled = variant.endswith(COMPILED)
    rest = variant.removesuffix(COMPILED)
    return rest.removesuffix(SPARSE), rest.endswith(SPARSE), compiled


@dataclass(frozen=True)
class Case:
    """One comparison: a model at one request size, its stock run and the Bottleneck Sampling variants against it."""

    name: str
    model: str  # "flux", "wan", "sd3", "wan22" or "qwen-image": which pipeline
    variants: tuple[str, ...]  # "stock", a preset name, or a preset name + "+sparse"
    height: int
    width: int
    frames: int | None  # video frames (None for images)
    steps: int  # the stock pipeline's steps
    guidance_scale: float
    repeats: int
    text_tokens: int = TEXT_TOKENS
    sparse: dict = field(default_factory=lambda: {"density": 0.05})  # SparseAttentionConfig keywords
    guidance_arg: str = "guidance_scale"  # the __call__ keyword guidance_scale goes to (Qwen-Image: true_cfg_scale;
    # "": none, the pipeline's guider holds it)


CASES: dict[str, Case] = {
    "flux": Case("flux", "flux", ("stock", "flux-3x"), 1024, 1024, None, 50, 3.5, repeats=3),
    "wan": Case("wan", "wan", ("stock", "wan-3x", "wan-2x"), 480, 832, 81, 50, 5.0, repeats=2),
    "wan-sparse": Case("wan-sparse", "wan", ("stock", "wan-3x" + SPARSE), 480, 832, 81, 50, 5.0, repeats=2),
    # torch.compile (`compile_repeated_blocks(fullgraph=True)`, Inductor) with and without sparse attention, and
    # sparse attention alone over the stock 50 steps (the row sparse-attention papers publish)
    "wan-compile": Case("wan-compile", "wan", ("stock", "stock" + COMPILED, "stock" + SPARSE, "wan-3x" + SPARSE,
                                              "wan-3x" + SPARSE + COMPILED), 480, 832, 81, 50, 5.0, repeats=1),
    "sd3": Case("sd3", "sd3", ("stock", "sd3-2x"), 1024, 1024, None, 28, 7.0, repeats=3, text_tokens=SD3_TEXT_TOKENS),
    # Wan2.2-T2V-A14B, both experts (2 × 14.3B in bf16: 53 GiB), 81 frames at 480p to fit one 80 GB card. Sparse
    # without Re-ttention's reshape: its residual, (B, H, N, D) per layer and CFG branch, is 335 MB per layer here,
    # 27 GB for the running expert's 40 layers (the other's released), which does not fit beside the weights
    "wan22": Case("wan22", "wan22", ("stock", "wan22-3x", "stock" + SPARSE, "wan22-3x" + SPARSE), 480, 832, 81, 50,
                  4.0, repeats=1, sparse={"density": 0.05, "reshape": False}),
    "qwen-image": Case("qwen-image", "qwen-image",
                       ("stock", "stock" + SPARSE, "qwenimage-2x", "qwenimage-2x" + SPARSE), 1328, 1328, None, 50, 4.0,
                       repeats=2, text_tokens=QWEN_TEXT_TOKENS, guidance_arg="true_cfg_scale"),
    "flux2": Case("flux2", "flux2", ("stock", "stock" + SPARSE, "flux2-2x", "flux2-2x" + SPARSE), 1024, 1024, None, 50,
                  4.0, repeats=2),
    # HunyuanVideo-1.5 480p (480×848, 121 frames), guided by its CFG guider (the guidance scale is the guider's);
    # text_tokens: valid prompt tokens of the 1000 it pads to
    "hunyuan-video15": Case("hunyuan-video15", "hunyuan-video15",
                            ("stock", "stock" + SPARSE, "hunyuanvideo15-3x", "hunyuanvideo15-3x" + SPARSE), 480, 848,
                            121, 50, 6.0, repeats=1, text_tokens=128, guidance_arg=""),
}
DEFAULT_CASES: tuple[str, ...] = ("flux", "wan", "wan-sparse", "sd3")
QUICK_STEPS, QUICK_FRAMES, QUICK_REPEATS = 10, 33, 1  # --quick: stages scaled by QUICK_STEPS / steps
MAX_STEPS = 1000
WARMUP_STEPS = 2  # steps per stage of the warm-up of variants that compile nothing
# the targets: (case, variant, minimum speed-up, over which variant of the case); whole generation where decode
# was measured
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("flux", "flux-3x", 2.8, "stock"), ("wan", "wan-3x", 2.5, "stock"),
    ("wan-sparse", "wan-3x" + SPARSE, 6.0, "stock"),
    ("wan-compile", "wan-3x" + SPARSE, 6.0, "stock"),
    ("wan-compile", "wan-3x" + SPARSE + COMPILED, 8.0, "stock"),
    ("wan-compile", "wan-3x" + SPARSE + COMPILED, 4.0, "stock" + COMPILED),
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
    steps: int | None = None  # every case's stock steps (stages scaled alike), frames and sizes unchanged


def parse_cases(text: str) -> list[str]:
    """Case names, comma-separated, from CASES (Bottleneck Sampling, Tian et al. 2025, comparisons)."""
    return parse_names(text, CASES, "--cases")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The end-to-end benchmark's options (Bottleneck Sampling, Tian et al. 2025)."""
    quick = f"{QUICK_STEPS} steps (stages scaled alike), {QUICK_FRAMES} frames, {QUICK_REPEATS} repeat"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and prompt embeddings (default 0)")
    parser.add_argument("--cases", type=parse_cases, metavar="C,...",
                        help=f"cases to run, of {', '.join(CASES)} (default all)")  # fmt: skip
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="timed generations per variant (default: flux and sd3 3, wan 2)")  # fmt: skip
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS, metavar="N",
                        help=f"steps per stage of the warm-up where nothing compiles (default {WARMUP_STEPS}; 0: "
                        "whole generations)")  # fmt: skip
    parser.add_argument("--no-decode", action="store_true", help="skip the VAE decode timing")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="stock steps of every case, stages scaled alike, sizes and frames kept (default: each "
                        "case's own)")  # fmt: skip


def options_from_args(args: argparse.Namespace) -> E2EOptions:
    """E2EOptions from parsed arguments (`unbottle bench e2e` or bench/e2e.py)."""
    repeats = getattr(args, "repeats", None)
    warmup = getattr(args, "warmup_steps", WARMUP_STEPS)
    if repeats is not None and repeats < 1:
        raise UsageError(f"--repeats must be ≥ 1, got {repeats}")
    if warmup is None or warmup < 0:
        raise UsageError(f"--warmup-steps must be ≥ 0, got {warmup}")
    steps = getattr(args, "steps", None)
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be 1..{MAX_STEPS}, got {steps}")
    return E2EOptions(
        cases=getattr(args, "cases", None) or list(DEFAULT_CASES), repeats=repeats, warmup_steps=warmup,
        decode=not getattr(args, "no_decode", False), seed=getattr(args, "seed", 0) or 0,
        quick=getattr(args, "quick", False), steps=steps,
    )  # fmt: skip


def effective_case(case: Case, options: E2EOptions) -> Case:
    """The case as run: --quick's steps, frames and repeats, then --repeats."""
    if options.quick:
        frames = min(case.frames, QUICK_FRAMES) if case.frames else case.frames
        case = dataclasses.replace(case, steps=min(case.steps, QUICK_STEPS), frames=frames, repeats=QUICK_REPEATS)
    if options.steps is not None:
        case = dataclasses.replace(case, steps=options.steps)
    if options.repeats is not None:
        case = dataclasses.replace(case, repeats=options.repeats)
    return case

"""Diffusion-LM benchmark (issue #9): LLaDA-8B-shaped masked-diffusion generation, dense SDPA vs SparseD.

    unbottle bench dlm -o bench/results        # or: python bench/diffusion_lm.py -o bench/results   (a CUDA GPU)
    python bench/diffusion_lm.py --layers 2 --quick -o /tmp/out                 # smoke run, 1–2 minutes
    python bench/diffusion_lm.py --contexts 65536 --sections steps -o bench/results

Model: the LLaDA-8B shape (Nie et al., 2025) as a stock transformers `GemmaForCausalLM` made bidirectional
(`use_bidirectional_attention=True`, `is_causal=False`, as the shapes DLM is): hidden 4096, 32 layers, 32 heads and 32
KV heads of 128, a gated SiLU MLP (SwiGLU, LLaDA's) 12288 wide, vocabulary 126464, untied LM head, RoPE θ 500000, no
biases: 8.02B parameters, LLaDA-8B's count. Random weights (transformers' normal init) are built directly on the GPU in
bf16; eval mode, attn_implementation "sdpa". Not LLaDA: Gemma's √hidden embedding scale and (1 + w) RMSNorm, which
are elementwise and do not change the cost (derived). `--layers N` keeps the width and changes the depth; the results
then say "N layers, not real-size".

Inputs: batch 1; a context of C tokens is a random prompt of C − 256 token ids (seeded, below the mask id) followed by
gen_length = 256 mask tokens (126336, LLaDA's mask id). No attention mask and no padding: transformers builds no mask
for a bidirectional batch-1 input, so every attention call gets mask None and the sparse engine takes its fast path,
never the dense-masked PyTorch reference (`_run_sparse`); every sparse row counts both kinds of call to prove it.

Modes:
- `dense-cudnn`, `dense-flash`: the stock model under `sdpa_kernel(CUDNN_ATTENTION)` / `sdpa_kernel(FLASH_ATTENTION)`.
- `sparsed-flex`: SparseD (Wang et al., 2025) on the engine's own path, `unbottle.enable_sparse_attention(model,
  SparseAttentionConfig(density=d, pattern="cached", reshape=False, block_size=128, full_steps=0.2))`: dense steps
  call the original sdpa, sparse steps compiled FlexAttention (`block_sparse_attention_flex`) over per-head block
  patterns computed once per generation at the first sparse step (the pattern step) and reused.
- `sparsed-triton`: the same, with the engine's block-sparse call routed to `block_sparse_attention_triton`
  (`route_sparse_attention`).
SparseD's long-context settings (its README): select 0.3, skip 0.2, block 128, so densities 0.3 and 0.1 (sparser,
for the 2× target) and `full_steps=0.2`: at T = 16 steps, steps 0–3 are dense, step 4 is the pattern step, steps
5–15 are cached sparse steps (SparseD itself runs one more dense step, see transformers_attention.py). No reshape
(SparseD has none). The dense steps of the sparse modes run under `sdpa_kernel(CUDNN_ATTENTION)`.

Per-step rows: a step is the forward `DiffusionLMPipeline` runs (its `_block_logits`: input_ids, `logits_to_keep` =
the 256 generated positions, use_cache False), driven to its kind through `notify_dlm_generation_start` /
`notify_dlm_step` (`StepDriver`):
- dense step (dense modes): the median of `--repeats` after one warm-up;
- pattern step: the first sparse step of a new generation: exact attention with log-sum-exps, SparseD's tile
  importance and isolated selection, the BlockMask, then the sparse attention; `--pattern-repeats` (1) timed runs,
  each a new generation, after a warm-up that compiles / autotunes the kernel exactly as the engine calls it (one
  sparse forward with pattern="window" at the same density) and runs the exact attention on the step's shapes;
- cached sparse step: the next step of the same generation, the median of `--repeats` after one warm-up.
Each sparse row records the engine's pattern computations (a pattern step adds one per layer, a cached step none),
the block-sparse calls on the fast path (one per layer) and those that fell back to the masked reference (none);
anything else is an error.

Whole generation: `DiffusionLMPipeline(model, None, mask_token_id=126336)(input_ids=prompt, gen_length=256,
steps=T, block_length=256)` (one block, low-confidence remasking, temperature 0; default T = `--gen-steps` 16), one
row per mode in `--gen-modes` (dense-cudnn and each sparse mode × density), timed once with everything warm, CUDA
synchronized around it; its per-step times come from `callback_on_step_end` (synchronized), and the kind of every step
is read off the engine's counters. Composed estimates n_dense·dense + pattern + n_sparse·sparse from the per-step rows
cross-check the measured generations and extrapolate to SparseD's T = 128 and T = 1,024 (its 1.50× at 64k is at 1,024
steps), against dense-cudnn and dense-flash. All ratios are dense time / sparse time within the same run.

Time: wall time (time.perf_counter), CUDA synchronized before and after. Memory: `torch.cuda.max_memory_allocated`
per row, reset at the row's start (weights included). Budget: before each row, a run past `--budget-s` skips it (and
says so); a generation row is also skipped when the time spent plus its composed estimate would pass the budget.

Device time (H200, derived from FLOPs: linear layers ≈ 2 · 6.98e9 · C, attention 4 · 32 · C² · 128 · 32): a dense
step ≈ 0.3 / 0.7 / 1.9 / 5.7 s at 8k / 16k / 32k / 64k; the pattern step is dominated by the tile-importance pass,
which reads and writes ≈ 10 GiB of fp32 scores per 128-query chunk (memory-bound, ≈ 1.3 s per layer at 64k), so
≈ 1 / 3 / 12 / 45 s. The per-step rows cost ≈ 10 / 25 / 80 / 290 s per context (plus ≈ 1 min of compilation and
model building), a 16-step generation row ≈ 16 dense steps or 4 dense + pattern + 11 sparse steps (8k–32k: ≈ 20 /
55 / 150 s for the five default rows; 64k: ≈ 90 s each, 470 s). Contexts run in order, each one's generations right
after its per-step rows, so one default run (420 s budget) covers 8k–32k and skips most of 64k: run 64k as its own
commands (bench/README.md lists them).
Measured on the H200 (2026-12-02, bench/results/dlm-h200.md): a 64k dense step 5.56 s (cuDNN) / 8.33 s (flash),
a 64k pattern step 68.6 s (not 45), a cached sparse step 2.44 s at density 0.1.

Output: dlm-<gpu>[-tags].json and .md, rewritten after every row so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import script
from .attention import _error_text, _free, _git_commit, _log, gpu_tag, parse_densities
from .script import parse_names, share_quick_and_seed

NO_CUDA_MESSAGE = "the diffusion-LM benchmark needs a CUDA GPU; torch sees none here"
CONTEXTS: tuple[int, ...] = (8192, 16384, 32768, 65536)
QUICK_CONTEXTS: tuple[int, ...] = (8192, 16384)
GEN_LENGTH, GEN_STEPS, QUICK_GEN_STEPS = 256, 16, 8
REPEATS, QUICK_REPEATS, PATTERN_REPEATS = 3, 2, 1
DENSITIES: tuple[float, ...] = (0.3, 0.1)  # SparseD's long-context select (0.3), and a sparser setting
FULL_STEPS = 0.2  # SparseD's skip: the first 20% of the steps are dense
BLOCK_SIZE = 128  # SparseD's long-context block size = FlexAttention's tile
MASK_TOKEN_ID = 126336  # LLaDA-8B's mask token
LAYERS = 32
MAX_POSITIONS = 131072  # ≥ 65,536 + gen_length; RoPE is computed on the fly, so the size costs nothing
BUDGET_S = 420.0
COMPOSED_STEPS: tuple[int, ...] = (128, 1024)  # SparseD's latency settings (T=128 in Fig. 4, 1,024 for its 1.50×)
TARGET_CONTEXT, TARGET_SPEEDUP = 65536, 2.0  # issue #9: ≥ 2× over dense at 64k
SECTIONS: tuple[str, ...] = ("steps", "generation")
SPARSE_DENSE_BACKEND = "CUDNN_ATTENTION"  # the SDPA backend of the sparse modes' dense steps (and the dense baseline)
# mode → (family, SDPA backend of its dense steps, sparse kernel: None = the engine's own block_sparse_attention)
MODES: dict[str, tuple[str, str, str | None]] = {
    "dense-cudnn": ("dense", "CUDNN_ATTENTION", None),
    "dense-flash": ("dense", "FLASH_ATTENTION", None),
    "sparsed-flex": ("sparse", SPARSE_DENSE_BACKEND, "flex"),
    "sparsed-triton": ("sparse", SPARSE_DENSE_BACKEND, "triton"),
}
DEFAULT_MODES: tuple[str, ...] = tuple(MODES)
DEFAULT_GEN_MODES: tuple[str, ...] = ("dense-cudnn", "sparsed-flex", "sparsed-triton")
TIMING_DEFINITION = (
    "wall time (time.perf_counter) of one step's forward as DiffusionLMPipeline runs it (input_ids, logits_to_keep = "
    "the generated positions, use_cache False; the step notification included), CUDA synchronized before and after. "
    "Dense and cached sparse steps: median of the repeats after one warm-up; pattern step: each run a new generation, "
    "after a warm-up that compiled the kernel. Whole generation: one DiffusionLMPipeline call (sampling included), "
    "everything warm; its per-step times from callback_on_step_end, synchronized. Peak memory: "
    "torch.cuda.max_memory_allocated per row, reset at the row's start, weights included."
)

# LLaDA-8B (GSAI-ML/LLaDA-8B-Instruct config.json) as GemmaConfig keywords
LLADA_8B: dict[str, Any] = dict(
    vocab_size=126464, hidden_size=4096, intermediate_size=12288, num_hidden_layers=LAYERS, num_attention_heads=32,
    num_key_value_heads=32, head_dim=128, hidden_act="silu", max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}, attention_bias=False, tie_word_embeddings=False,
    pad_token_id=126081, eos_token_id=126081, bos_token_id=None, use_cache=False, initializer_range=0.02,
    use_bidirectional_attention=True, is_causal=False,
)  # fmt: skip


class OptionError(ValueError):
    """A bad `DLMOptions` field: the message names the field, the value and the allowed range."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"DLMOptions.{name} {message}")
        self.field = name


def _int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
        raise OptionError(name, f"must be {bounds}, got {value!r}")
    return value


@dataclass(frozen=True)
class DLMOptions:
    """What to run (SparseD on LLaDA-8B-shaped generation, Wang et al. 2025): contexts, modes, densities, steps."""

    contexts: tuple[int, ...] = CONTEXTS  # prompt + gen_length tokens
    gen_contexts: tuple[int, ...] | None = None  # contexts with whole-generation rows; None = all
    gen_length: int = GEN_LENGTH
    gen_steps: int = GEN_STEPS  # T of the whole generation (and the step clock of the per-step rows)
    layers: int = LAYERS
    modes: tuple[str, ...] = DEFAULT_MODES  # per-step rows
    gen_modes: tuple[str, ...] = DEFAULT_GEN_MODES  # whole-generation rows
    densities: tuple[float, ...] = DENSITIES
    full_steps: float = FULL_STEPS
    block_size: int = BLOCK_SIZE
    repeats: int = REPEATS
    pattern_repeats: int = PATTERN_REPEATS
    sections: tuple[str, ...] = SECTIONS
    mask_token_id: int = MASK_TOKEN_ID
    budget_s: float = BUDGET_S
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        gen = _int("gen_length", self.gen_length, 1)
        for name in ("contexts", "gen_contexts", "modes", "gen_modes", "densities", "sections"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                raise OptionError(name, f"must be a tuple, got {value!r}")
        if not self.contexts:
            raise OptionError("contexts", "must name at least one context, got ()")
        for c in self.contexts:
            if isinstance(c, bool) or not isinstance(c, int) or not gen < c <= MAX_POSITIONS:
                raise OptionError("contexts", f"must be integers in ({gen}, {MAX_POSITIONS}] (prompt + gen_length "
                                  f"{gen} tokens), got {c!r}")  # fmt: skip
        if len(set(self.contexts)) != len(self.contexts):
            raise OptionError("contexts", f"must not repeat a context, got {self.contexts!r}")
        if self.gen_contexts is not None and not set(self.gen_contexts) <= set(self.contexts):
            raise OptionError("gen_contexts", f"must be among contexts {self.contexts}, got {self.gen_contexts!r}")
        steps = _int("gen_steps", self.gen_steps, 3, gen)
        if not (isinstance(self.full_steps, float) and 0.0 <= self.full_steps < 1.0):
            raise OptionError("full_steps", f"must be a fraction of the steps in [0, 1), got {self.full_steps!r}")
        n_dense, _, n_sparse = schedule_counts(steps, self.full_steps)
        if n_sparse < 1:
            raise OptionError("gen_steps", f"must leave a cached sparse step after {n_dense} dense steps and the "
                              f"pattern step (full_steps {self.full_steps}), got {steps}")  # fmt: skip
        _int("layers", self.layers, 1, 256)
        for name, allowed in (("modes", MODES), ("gen_modes", MODES), ("sections", SECTIONS)):
            value = getattr(self, name)
            bad = [m for m in value if m not in allowed]
            if bad or (name != "gen_modes" and not value):
                raise OptionError(name, f"must be names from {', '.join(allowed)}, got {value!r}")
        if not self.densities:
            raise OptionError("densities", "must name at least one density, got ()")
        for d in self.densities:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not (math.isfinite(d) and 0.0 < d < 1.0):
                raise OptionError("densities", f"must be numbers in (0, 1) (1 would keep every step dense), got {d!r}")
        _int("block_size", self.block_size, 1, 4096)
        _int("repeats", self.repeats, 1)
        _int("pattern_repeats", self.pattern_repeats, 1)
        _int("mask_token_id", self.mask_token_id, 0)
        if isinstance(self.budget_s, bool) or not isinstance(self.budget_s, (int, float)) or not self.budget_s > 0:
            raise OptionError("budget_s", f"must be > 0 seconds, got {self.budget_s!r}")
        _int("seed", self.seed, 0)

    @property
    def generation_contexts(self) -> tuple[int, ...]:
        """The contexts with whole-generation rows (LLaDA sampling), in run order."""
        if "generation" not in self.sections:
            return ()
        if self.gen_contexts is None:
            return self.contexts
        return tuple(c for c in self.contexts if c in self.gen_contexts)


# ---- model, schedule, arithmetic ----------------------------------------------------------------------------------


def llada_config(layers: int = LAYERS, **overrides: Any) -> Any:
    """The LLaDA-8B shape (Nie et al., 2025) as a bidirectional sdpa `GemmaConfig`; `overrides` replace keywords."""
    from transformers import GemmaConfig

    kwargs = {**LLADA_8B, "num_hidden_layers": layers, **overrides}
    config = GemmaConfig(**kwargs)
    config._attn_implementation = "sdpa"
    return config


def parameter_count(config: Any) -> int:
    """Parameters of a `GemmaForCausalLM` from its config (LLaDA-8B: 8.02B): embeddings, layers, norm, LM head."""
    h, v, i, d = config.hidden_size, config.vocab_size, config.intermediate_size, config.head_dim
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    attention = h * d * (2 * heads + 2 * kv)  # q, k, v, o projections
    if config.attention_bias:
        attention += d * (heads + 2 * kv) + h
    layer = attention + 3 * h * i + 2 * h  # + gated MLP (gate, up, down) + two RMSNorms
    heads_out = 1 if config.tie_word_embeddings else 2  # input embedding (+ untied LM head)
    return heads_out * v * h + config.num_hidden_layers * layer + h


def build_model(config: Any, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight `GemmaForCausalLM` (LLaDA-8B-shaped, Nie et al. 2025) built directly on `device` in `dtype`."""
    from transformers import GemmaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = GemmaForCausalLM._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def schedule_counts(steps: int, full_steps: float) -> tuple[int, int, int]:
    """(dense, pattern, cached sparse) steps of a T-step SparseD generation (Wang et al. 2025), as the engine runs."""
    from ..attention_processors import SparseAttentionConfig

    n_dense = min(steps, SparseAttentionConfig(full_steps=full_steps).num_full_steps(steps))
    n_pattern = 1 if n_dense < steps else 0
    return n_dense, n_pattern, steps - n_dense - n_pattern


def composed_seconds(dense_s: float, pattern_s: float, sparse_s: float, steps: int, full_steps: float) -> float:
    """Seconds of a T-step SparseD generation (Wang et al. 2025) from its step times: n_dense·dense + pattern +
    n_sparse·sparse."""
    n_dense, n_pattern, n_sparse = schedule_counts(steps, full_steps)
    return n_dense * dense_s + n_pattern * pattern_s + n_sparse * sparse_s


def sparse_config(options: DLMOptions, density: float, pattern: str = "cached") -> Any:
    """SparseD's settings (Wang et al. 2025) as the engine's config: `pattern` at `density`, no reshape, the run's
    block size and dense fraction (SparseD's skip)."""
    from ..attention_processors import SparseAttentionConfig

    return SparseAttentionConfig(density=density, pattern=pattern, reshape=False, block_size=options.block_size,
                                 full_steps=options.full_steps)  # fmt: skip


# ---- routing the engine's sparse calls ----------------------------------------------------------------------------


@dataclass
class SparseCalls:
    """Calls of the engine's block-sparse attention (SparseD) inside `route_sparse_attention`."""

    kernel: Callable
    fast: int = 0  # mask-free calls, run by `kernel`
    masked_reference: int = 0  # calls that carried a mask and fell back to the dense-masked PyTorch reference


@contextlib.contextmanager
def route_sparse_attention(kernel: Callable | None = None) -> Iterator[SparseCalls]:
    """Route the engine's mask-free block-sparse calls (SparseD, Wang et al. 2025) to `kernel` and count every call.

    Swaps the two names `transformers_attention._run_sparse` calls — `block_sparse_attention` (no mask: here a
    counting wrapper around `kernel`, default the engine's own function) and `block_sparse_attention_reference` (a
    mask: the same reference, counted) — and restores both on exit, also on an error.
    """
    from ..attention_processors import transformers_attention as ta

    fast, reference = ta.block_sparse_attention, ta.block_sparse_attention_reference
    calls = SparseCalls(kernel if kernel is not None else fast)

    def routed(*args: Any, **kwargs: Any) -> Any:
        calls.fast += 1
        return calls.kernel(*args, **kwargs)

    def masked(*args: Any, **kwargs: Any) -> Any:
        calls.masked_reference += 1
        return reference(*args, **kwargs)

    ta.block_sparse_attention, ta.block_sparse_attention_reference = routed, masked
    try:
        yield calls
    finally:
        ta.block_sparse_attention, ta.block_sparse_attention_reference = fast, reference


def triton_sparse_attention() -> contextlib.AbstractContextManager[SparseCalls]:
    """`route_sparse_attention` to `block_sparse_attention_triton` (issue #5): SparseD's sparse steps on Triton."""
    from ..attention_processors.kernels import block_sparse_attention_triton

    return route_sparse_attention(block_sparse_attention_triton)


def _kernel_route(mode: str) -> contextlib.AbstractContextManager[SparseCalls]:
    """Our Triton kernel for `sparsed-triton`; compiled FlexAttention alone for `sparsed-flex` (the engine's own call
    would take our kernel from `TRITON_MIN_KEYS` keys on Hopper)."""
    if MODES[mode][2] == "triton":
        return triton_sparse_attention()
    from ..attention_processors.block_sparse import block_sparse_attention_flex

    return route_sparse_attention(block_sparse_attention_flex)


def _sdpa(backend: str, device: torch.device) -> contextlib.AbstractContextManager:
    """`sdpa_kernel(backend)` on CUDA; nothing on the CPU (dry runs), where these backends do not exist."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, backend))


# ---- the step driver ----------------------------------------------------------------------------------------------


def prompt_ids(context: int, options: DLMOptions, vocab_size: int, device: torch.device) -> torch.Tensor:
    """(1, context − gen_length) seeded random prompt ids below the mask id (LLaDA's canvas: prompt + masks)."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + context)
    high = min(options.mask_token_id, vocab_size)
    return torch.randint(0, high, (1, context - options.gen_length), generator=generator).to(device)


class StepDriver:
    """One LLaDA generation's forward (Nie et al. 2025), driven to a dense, pattern or cached sparse step (SparseD).

    Each step is `DiffusionLMPipeline._block_logits` on the canvas [prompt | gen_length masks], batch 1, no mask,
    after the notifications the pipeline sends: `notify_dlm_generation_start` (prompt length, gen_length, a mask of
    ones, total_steps) for a new generation, then `notify_dlm_step(model, step, total_steps)`.
    """

    def __init__(self, pipe: Any, prompt: torch.Tensor, gen_length: int, total_steps: int, full_steps: float) -> None:
        self.pipe, self.model = pipe, pipe.model
        self.prompt_length, self.gen_length, self.total_steps = prompt.shape[1], gen_length, total_steps
        masks = torch.full((1, gen_length), pipe.mask_token_id, dtype=torch.long, device=prompt.device)
        self.x = torch.cat([prompt, masks], 1)  # (1, L)
        self.mask = torch.ones_like(self.x)  # (1, L): what the pipeline notifies (no padding)
        self.params = pipe._forward_parameters()
        self.first_sparse = schedule_counts(total_steps, full_steps)[0]
        self.last_kind: str | None = None  # the engine's kind for the last step (None: no engine)

    def _start(self) -> None:
        from ..attention_processors import notify_dlm_generation_start

        notify_dlm_generation_start(self.model, prompt_length=self.prompt_length, gen_length=self.gen_length,
                                    attention_mask=self.mask, total_steps=self.total_steps)  # fmt: skip

    @torch.no_grad()  # as DiffusionLMPipeline.__call__ (compiled kernels guard on the grad mode)
    def forward(self, step: int) -> torch.Tensor:
        """Notify step `step`, then the pipeline's forward: logits (1, gen_length, V) of the generated positions."""
        from ..attention_processors.dlm_state import dlm_state, notify_dlm_step

        notify_dlm_step(self.model, step, self.total_steps)
        state = dlm_state(self.model)
        self.last_kind = None if state is None else state.kind().value
        start = self.prompt_length
        return self.pipe._block_logits(self.x, None, None, start, start + self.gen_length, self.params)

    def dense(self) -> torch.Tensor:
        """Step 0 of a new generation: dense while full_steps > 0 (and on a model without the engine)."""
        self._start()
        return self.forward(0)

    def pattern(self) -> torch.Tensor:
        """The first sparse step of a new generation: SparseD computes every layer's pattern here."""
        self._start()
        return self.forward(self.first_sparse)

    def sparse(self) -> torch.Tensor:
        """A cached sparse step: the step after the pattern step, in the same generation (patterns reused)."""
        return self.forward(self.first_sparse + 1)


# ---- rows ---------------------------------------------------------------------------------------------------------


def _step_row(context: int, options: DLMOptions, mode: str, density: float | None, kind: str) -> dict:
    """A per-step row with every key present (None until measured)."""
    return {
        "section": "steps", "context": context, "prompt_length": context - options.gen_length, "mode": mode,
        "density": density, "kind": kind, "engine_kind": None, "warmup_s": [], "times_s": [], "s": None,
        "vs_dense_cudnn": None, "vs_dense_flash": None, "patterns_added": [], "fast_calls": [],
        "masked_reference_calls": [], "check_ok": None, "logits_finite": None, "peak_gib": None, "skipped": None,
        "error": None,
    }  # fmt: skip


def _gen_row(context: int, options: DLMOptions, mode: str, density: float | None) -> dict:
    """A whole-generation row with every key present (None until measured)."""
    if MODES[mode][0] == "sparse":
        n_dense, n_pattern, n_sparse = schedule_counts(options.gen_steps, options.full_steps)
    else:
        n_dense, n_pattern, n_sparse = options.gen_steps, 0, 0
    return {
        "section": "generation", "context": context, "prompt_length": context - options.gen_length, "mode": mode,
        "density": density, "steps": options.gen_steps, "n_dense": n_dense, "n_pattern": n_pattern,
        "n_sparse": n_sparse, "s": None, "step_times_s": [], "step_kinds": [], "expected_kinds": None,
        "kinds_ok": None, "dense_step_s": None, "pattern_step_s": None, "sparse_step_s": None, "composed_s": None,
        "composed_over_measured": None, "vs_dense_cudnn": None, "vs_dense_flash": None,
        "vs_dense_flash_basis": None, "patterns_added": None,
        "estimate_s": None, "peak_gib": None, "skipped": None, "error": None,
    }  # fmt: skip


def expected_kinds(mode: str, steps: int, full_steps: float) -> list[str]:
    """The kind of each step of a T-step generation in `mode`: all dense, or SparseD's dense → pattern → sparse."""
    if MODES[mode][0] == "dense":
        return ["dense"] * steps
    n_dense, n_pattern, n_sparse = schedule_counts(steps, full_steps)
    return ["dense"] * n_dense + ["pattern"] * n_pattern + ["sparse"] * n_sparse


def step_kind_from_counts(patterns_added: int, fast: int, masked: int, layers: int) -> str:
    """What a forward was, from the engine's counters (SparseD): dense (no sparse call), pattern, cached sparse."""
    if masked:
        return f"masked-reference×{masked}"
    if fast == 0 and patterns_added == 0:
        return "dense"
    if fast != layers:
        return f"sparse-calls×{fast}"
    if patterns_added == layers:
        return "pattern"
    return "sparse" if patterns_added == 0 else f"patterns×{patterns_added}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _rows(results: dict, section: str, context: int, **match: Any) -> list[dict]:
    return [r for r in results.get(f"{section}_rows", []) if r["context"] == context
            and all(r.get(k) == v for k, v in match.items())]  # fmt: skip


def _time_of(results: dict, section: str, context: int, **match: Any) -> float | None:
    """The measured seconds of the first matching row (no error), or None."""
    for r in _rows(results, section, context, **match):
        if r.get("s") is not None and not r.get("error"):
            return r["s"]
    return None


def _ratio(base: float | None, value: float | None) -> float | None:
    return base / value if base and value else None


def composed_estimates(results: dict) -> list[dict]:
    """Composed SparseD generation times (Wang et al. 2025) at T = gen_steps, 128, 1024 from the per-step rows, with
    speed-ups vs dense-cudnn and dense-flash (T · dense step)."""
    options = results.get("options", {})
    full = options.get("full_steps", FULL_STEPS)
    steps = sorted({options.get("gen_steps", GEN_STEPS), *COMPOSED_STEPS})
    out = []
    for context in dict.fromkeys(r["context"] for r in results.get("steps_rows", [])):
        dense = {m: _time_of(results, "steps", context, mode=m, kind="dense") for m in ("dense-cudnn", "dense-flash")}
        pairs = dict.fromkeys((r["mode"], r["density"]) for r in _rows(results, "steps", context, kind="pattern"))
        for mode, density in pairs:
            pattern = _time_of(results, "steps", context, mode=mode, density=density, kind="pattern")
            sparse = _time_of(results, "steps", context, mode=mode, density=density, kind="sparse")
            if pattern is None or sparse is None:
                continue
            for t in steps:
                entry = {"context": context, "mode": mode, "density": density, "steps": t}
                for name, d in dense.items():
                    key = name.removeprefix("dense-")
                    s = None if d is None else composed_seconds(d, pattern, sparse, t, full)
                    entry[f"s_{key}"], entry[f"dense_s_{key}"] = s, (None if d is None else t * d)
                    entry[f"vs_dense_{key}"] = _ratio(entry[f"dense_s_{key}"], s)
                out.append(entry)
    return out


def finish(results: dict) -> dict:
    """Fill the same-run ratios (dense time / row time), composed estimates and issue #9's 64k target."""
    options = results.get("options", {})
    full = options.get("full_steps", FULL_STEPS)
    for r in results.get("steps_rows", []):
        for name in ("dense-cudnn", "dense-flash"):
            base = _time_of(results, "steps", r["context"], mode=name, kind="dense")
            r[f"vs_{name.replace('-', '_')}"] = _ratio(base, r["s"])
    for r in results.get("generation_rows", []):
        c = r["context"]
        r["vs_dense_cudnn"] = _ratio(_time_of(results, "generation", c, mode="dense-cudnn"), r["s"])
        flash, r["vs_dense_flash_basis"] = _time_of(results, "generation", c, mode="dense-flash"), "generation"
        if flash is None:  # no dense-flash generation ran: T × its step time (the sampling left out)
            step = _time_of(results, "steps", c, mode="dense-flash", kind="dense")
            flash, r["vs_dense_flash_basis"] = (None, None) if step is None else (r["steps"] * step, "T × step")
        r["vs_dense_flash"] = _ratio(flash, r["s"])
        dense = _time_of(results, "steps", c, mode="dense-cudnn" if r["mode"] != "dense-flash" else "dense-flash",
                         kind="dense")  # fmt: skip
        if MODES[r["mode"]][0] == "dense":
            r["composed_s"] = None if dense is None else r["steps"] * dense
        else:
            pattern = _time_of(results, "steps", c, mode=r["mode"], density=r["density"], kind="pattern")
            sparse = _time_of(results, "steps", c, mode=r["mode"], density=r["density"], kind="sparse")
            known = None not in (dense, pattern, sparse)
            r["composed_s"] = composed_seconds(dense, pattern, sparse, r["steps"], full) if known else None
        r["composed_over_measured"] = _ratio(r["composed_s"], r["s"])
    results["composed"] = composed_estimates(results)
    results["target"] = evaluate_target(results)
    return results


def evaluate_target(results: dict) -> dict:
    """Issue #9's target at 64k: a SparseD whole generation ≥ 2× faster than dense (paper: 1.5× over FlashAttention).

    `met` is decided by the measured whole generations at 64k (vs dense-cudnn, same run; None if none ran); the
    entries also list the cached sparse step and the composed T = gen_steps / 128 / 1024 generations."""
    entries = []
    c = TARGET_CONTEXT
    for r in _rows(results, "generation", c):
        if MODES[r["mode"]][0] == "sparse" and r["vs_dense_cudnn"] is not None:
            entries.append({"what": f"measured generation, T={r['steps']}, vs dense-cudnn", "mode": r["mode"],
                            "density": r["density"], "value": r["vs_dense_cudnn"], "measured": True})  # fmt: skip
    for r in _rows(results, "steps", c, kind="sparse"):
        for base in ("cudnn", "flash"):
            if r[f"vs_dense_{base}"] is not None:
                what = f"cached sparse step vs dense-{base} step"
                entries.append({"what": what, "mode": r["mode"], "density": r["density"],
                                "value": r[f"vs_dense_{base}"], "measured": True})  # fmt: skip
    for e in results.get("composed", []):
        if e["context"] != c:
            continue
        for base in ("cudnn", "flash"):
            if e[f"vs_dense_{base}"] is not None:
                what = f"composed generation, T={e['steps']}, vs dense-{base}"
                entries.append({"what": what, "mode": e["mode"], "density": e["density"],
                                "value": e[f"vs_dense_{base}"], "measured": False})  # fmt: skip
    for e in entries:
        e["met"] = e["value"] >= TARGET_SPEEDUP
    generations = [e for e in entries if e["what"].startswith("measured generation")]
    met = any(e["met"] for e in generations) if generations else None
    return {"context": c, "speedup": TARGET_SPEEDUP, "met": met, "entries": entries}


# ---- results: markdown, files -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _ctx(context: int) -> str:
    return f"{context // 1024}k" if context % 1024 == 0 else str(context)


def _density(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _note(row: dict) -> str:
    return "; ".join(x for x in (f"skipped: {row['skipped']}" if row.get("skipped") else "",
                                 f"error: {row['error']}" if row.get("error") else "") if x)  # fmt: skip


def markdown_report(results: dict) -> str:
    """The results as markdown (SparseD on LLaDA-8B shapes): setup, per-step and generation tables, composed
    estimates, the 64k target, notes."""
    options = results.get("options", {})
    model = results.get("model", {})
    config = model.get("config", {})
    n_dense, n_pattern, n_sparse = schedule_counts(options.get("gen_steps", GEN_STEPS),
                                                   options.get("full_steps", FULL_STEPS))  # fmt: skip
    lines = [
        f"# Diffusion-LM benchmark (issue #9), {results.get('gpu', '?')}: {model.get('description', '?')}",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {results.get('torch')}, transformers {results.get('transformers')}, diffusers "
        f"{results.get('diffusers')}, triton {results.get('triton')}, CUDA {results.get('cuda')}, cuDNN "
        f"{results.get('cudnn')}, unbottle {results.get('unbottle')} ({results.get('git_commit') or 'no git'}); "
        f"{results.get('started', '')}",
        "",
        f"- model: GemmaForCausalLM, {config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads ({config.get('num_key_value_heads')} KV) × "
        f"{config.get('head_dim')}, {config.get('hidden_act')}-gated MLP {config.get('intermediate_size')}, vocab "
        f"{config.get('vocab_size')}, bidirectional (is_causal {model.get('is_causal')}); "
        f"{_fmt((model.get('parameters') or 0) / 1e9, 2)}B parameters, random weights, {results.get('dtype')}, "
        f"built in {_fmt(results.get('setup_s'), 1)} s ({_fmt(results.get('weights_gib'), 1)} GiB)"
        + ("" if model.get("real_size") else " — not real-size"),
        f"- inputs: batch 1, context = random prompt + {options.get('gen_length')} mask tokens (id "
        f"{options.get('mask_token_id')}), no attention mask; whole generation: DiffusionLMPipeline, one block, "
        f"T={options.get('gen_steps')} steps, low-confidence remasking",
        f"- SparseD: SparseAttentionConfig(density=d, pattern='cached', reshape=False, block_size="
        f"{options.get('block_size')}, full_steps={options.get('full_steps')}) → {n_dense} dense steps, "
        f"{n_pattern} pattern step, {n_sparse} cached sparse steps; densities "
        f"{', '.join(_density(d) for d in options.get('densities', []))}; sparse modes' dense steps on "
        f"{SPARSE_DENSE_BACKEND}",
        f"- time: {results.get('timing', TIMING_DEFINITION)}",
        "",
    ]
    if results.get("steps_rows"):
        lines += [
            "## Per step",
            "",
            "| context | mode | density | step | s | runs s | vs dense-cudnn | vs dense-flash | patterns added | "
            "sparse calls (fast / masked) | peak GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["steps_rows"]:
            runs = ", ".join(f"{t:.3f}" for t in r["times_s"]) or "—"
            calls = (f"{'/'.join(map(str, r['fast_calls']))} / {'/'.join(map(str, r['masked_reference_calls']))}"
                     if r["fast_calls"] else "—")  # fmt: skip
            lines.append(
                f"| {_ctx(r['context'])} | {r['mode']} | {_density(r['density'])} | {r['kind']} | {_fmt(r['s'])} | "
                f"{runs} | {_fmt(r['vs_dense_cudnn'], 2, '×')} | {_fmt(r['vs_dense_flash'], 2, '×')} | "
                f"{'/'.join(map(str, r['patterns_added'])) or '—'} | {calls} | {_fmt(r['peak_gib'], 1)} | "
                f"{_note(r)} |"
            )
        lines.append("")
    if results.get("generation_rows"):
        lines += [
            f"## Whole generation (T={options.get('gen_steps')})",
            "",
            "| context | mode | density | s | vs dense-cudnn | vs dense-flash | composed s | composed / measured | "
            "dense step s | pattern step s | sparse step s | step kinds | peak GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["generation_rows"]:
            kinds = {True: "✓", False: "✗", None: "—"}[r["kinds_ok"]]
            star = "*" if r.get("vs_dense_flash_basis") == "T × step" else ""
            lines.append(
                f"| {_ctx(r['context'])} | {r['mode']} | {_density(r['density'])} | {_fmt(r['s'], 2)} | "
                f"{_fmt(r['vs_dense_cudnn'], 2, '×')} | {_fmt(r['vs_dense_flash'], 2, '×' + star)} | "
                f"{_fmt(r['composed_s'], 2)} | {_fmt(r['composed_over_measured'], 2)} | {_fmt(r['dense_step_s'])} | "
                f"{_fmt(r['pattern_step_s'])} | {_fmt(r['sparse_step_s'])} | {kinds} | {_fmt(r['peak_gib'], 1)} | "
                f"{_note(r)} |"
            )
        lines += ["", "step kinds ✓: every step was the kind the schedule claims (engine counters: dense steps make "
                  "no sparse call, the pattern step adds one pattern per layer, cached steps none). ×*: no "
                  "dense-flash generation ran, so the baseline is T × the dense-flash step (the sampling left out).",
                  ""]  # fmt: skip
    if results.get("composed"):
        lines += [
            "## Composed generations (from the per-step rows: n_dense·dense + pattern + n_sparse·sparse)",
            "",
            "| context | mode | density | T | s (dense steps cuDNN) | vs dense-cudnn | s (dense steps flash) | "
            "vs dense-flash |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in results["composed"]:
            lines.append(
                f"| {_ctx(e['context'])} | {e['mode']} | {_density(e['density'])} | {e['steps']} | "
                f"{_fmt(e['s_cudnn'], 2)} | {_fmt(e['vs_dense_cudnn'], 2, '×')} | {_fmt(e['s_flash'], 2)} | "
                f"{_fmt(e['vs_dense_flash'], 2, '×')} |"
            )
        lines.append("")
    target = results.get("target") or {}
    met = {True: "met", False: "not met", None: "not measured (no 64k whole generation in this run)"}
    lines += [f"## Target (issue #9): ≥ {TARGET_SPEEDUP:g}× over dense at {_ctx(TARGET_CONTEXT)} (paper: 1.5× over "
              "FlashAttention at 1,024 steps)", "",
              f"measured whole generation: **{met[target.get('met')]}**", ""]  # fmt: skip
    if target.get("entries"):
        lines += ["| what | mode | density | speed-up | ≥ 2× |", "|---|---|---|---|---|"]
        for e in target["entries"]:
            lines.append(f"| {e['what']} | {e['mode']} | {_density(e['density'])} | {_fmt(e['value'], 2, '×')} | "
                         f"{'yes' if e['met'] else 'no'} |")  # fmt: skip
        lines.append("")
    rows = results.get("steps_rows", []) + results.get("generation_rows", [])
    skipped = [r for r in rows if r.get("skipped")]
    errors = [r for r in rows if r.get("error")]
    if skipped:
        lines += [f"{len(skipped)} row(s) skipped (budget {options.get('budget_s')} s).", ""]
    if errors or results.get("setup_error"):
        lines += ["## Errors", ""]
        lines += [f"- setup: {results['setup_error']}"] if results.get("setup_error") else []
        lines += [f"- {r['section']} {_ctx(r['context'])} {r['mode']} {_density(r['density'])} "
                  f"{r.get('kind', '')}: {r['error']}" for r in errors]  # fmt: skip
        lines.append("")
    if results.get("wall_s") is not None:
        lines.append(f"total benchmark wall time {results['wall_s']} s")
    return "\n".join(lines).rstrip() + "\n"


def output_stem(results: dict) -> str:
    """dlm-<gpu>, plus the depth when not 32 layers, contexts / densities / section when not the defaults, -quick."""
    options = results.get("options", {})
    stem = f"dlm-{results.get('gpu_tag') or gpu_tag(results.get('gpu', 'gpu'))}"
    if options.get("layers", LAYERS) != LAYERS:
        stem += f"-{options['layers']}l"
    quick = bool(options.get("quick"))
    contexts = list(options.get("contexts") or CONTEXTS)
    if contexts != list(QUICK_CONTEXTS if quick else CONTEXTS):
        stem += "-" + "_".join(_ctx(c) for c in contexts)
    densities = list(options.get("densities") or DENSITIES)
    if densities != list(DENSITIES):
        stem += "-d" + "_".join(f"{d:g}" for d in densities)
    sections = list(options.get("sections") or SECTIONS)
    if sections != list(SECTIONS):
        stem += "-" + "_".join(sections)
    return stem + ("-quick" if quick else "")


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write dlm-<gpu>.json and .md (SparseD on LLaDA-8B shapes, issue #9); return {kind: path}."""
    return script.write_json_and_markdown(results, out_dir, output_stem(results), markdown_report(results))


# ---- measuring ----------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 2)


class _Runner:
    """One benchmark run: the model, its pipeline, the clock and budget, the warmed shapes, the results."""

    def __init__(self, model: Any, options: DLMOptions, device: torch.device, results: dict, out_dir: Path,
                 log: Callable[[str], None], started: float) -> None:  # fmt: skip
        from ..pipelines.diffusion_lm import DiffusionLMPipeline

        self.model, self.options, self.device, self.results, self.out_dir = model, options, device, results, out_dir
        self._log, self.started = log, started
        self.pipe = DiffusionLMPipeline(model, None, mask_token_id=options.mask_token_id)
        self.pipe.set_progress_bar_config(disable=True)
        self.layers = model.config.num_hidden_layers
        self.warmed: set[tuple[int, str]] = set()

    # -- plumbing -----------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        now = datetime.datetime.now().strftime("%H:%M:%S")
        self._log(f"[{now} +{time.perf_counter() - self.started:6.1f} s] dlm: {message}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_budget(self, estimate_s: float | None = None) -> str | None:
        """Why a row must be skipped (the budget is spent, or its estimate would pass it), else None."""
        spent = self.elapsed()
        if spent >= self.options.budget_s:
            return f"budget {self.options.budget_s:g} s spent ({spent:.0f} s elapsed)"
        if estimate_s is not None and spent + estimate_s > self.options.budget_s:
            return f"would pass the {self.options.budget_s:g} s budget ({spent:.0f} s elapsed + ≈ {estimate_s:.0f} s)"
        return None

    def save(self, row: dict) -> None:
        self.results[f"{row['section']}_rows"].append(row)
        finish(self.results)
        write_outputs(self.results, self.out_dir)

    def driver(self, context: int) -> StepDriver:
        prompt = prompt_ids(context, self.options, self.model.config.vocab_size, self.device)
        return StepDriver(self.pipe, prompt, self.options.gen_length, self.options.gen_steps, self.options.full_steps)

    @contextlib.contextmanager
    def mode(self, mode: str, density: float | None, pattern: str = "cached") -> Iterator[tuple[Any, Any]]:
        """The model as `mode` runs it: (engine handle, SparseCalls), both None for the dense modes."""
        import unbottle

        family, backend, _ = MODES[mode]
        with _sdpa(backend, self.device):
            if family == "dense":
                yield None, None
                return
            handle = unbottle.enable_sparse_attention(self.model, sparse_config(self.options, density, pattern))
            try:
                with _kernel_route(mode) as calls:
                    yield handle, calls
            finally:
                unbottle.disable_sparse_attention(self.model)

    def peak_reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> float | None:
        return _gib(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        _sync(self.device)
        start = time.perf_counter()
        out = fn()
        _sync(self.device)
        return time.perf_counter() - start, out

    @torch.no_grad()
    def warm_sparse(self, context: int, mode: str, density: float) -> None:
        """Compile / autotune the mode's kernel as the engine calls it (a "window" sparse forward at this density) and
        run the exact attention with LSE on the pattern step's shapes (SparseD), once per (context, mode)."""
        from ..attention_processors.block_sparse import dense_attention_with_lse

        if (context, mode) in self.warmed:
            return
        driver = self.driver(context)
        with self.mode(mode, density, pattern="window"):
            seconds, logits = self.timed(driver.pattern)
        del logits
        cfg = self.model.config
        heads, d = cfg.num_attention_heads, cfg.head_dim
        dtype = next(self.model.parameters()).dtype
        # (1, H, C, D) in the layout the attention modules produce: projections viewed (1, C, H, D), transposed
        q, k, v = (torch.randn(1, context, heads, d, device=self.device, dtype=dtype).transpose(1, 2) for _ in "qkv")
        g0 = math.ceil(driver.prompt_length / self.options.block_size) * self.options.block_size
        _sync(self.device)
        t0 = time.perf_counter()
        dense_attention_with_lse(q, k, v)  # the pattern step's exact attention over all keys
        dense_attention_with_lse(q, k[:, :, g0:], v[:, :, g0:])  # and over the generated region's keys
        _sync(self.device)
        extra = time.perf_counter() - t0
        del q, k, v
        _free(self.device)
        self.warmed.add((context, mode))
        self.log(f"{_ctx(context)} {mode}: kernel warm-up {seconds:.2f} s (window-pattern forward) + {extra:.2f} s "
                 "(exact attention with LSE)")  # fmt: skip

    # -- per-step rows ------------------------------------------------------------------------------------------
    def dense_row(self, context: int, mode: str) -> None:
        row = _step_row(context, self.options, mode, None, "dense")
        row["skipped"] = self.over_budget()
        if row["skipped"] is None:
            try:
                driver = self.driver(context)
                with self.mode(mode, None):
                    self.peak_reset()
                    for i in range(1 + self.options.repeats):
                        seconds, logits = self.timed(driver.dense)
                        (row["warmup_s"] if i == 0 else row["times_s"]).append(seconds)
                        if i == self.options.repeats:
                            row["logits_finite"] = bool(torch.isfinite(logits).all())
                        del logits
                self.warmed.add((context, mode))
                row["engine_kind"] = driver.last_kind
                row["s"] = _median(row["times_s"])
                row["peak_gib"] = self.peak()
            except Exception as e:  # noqa: BLE001 — out of memory, a backend refusing the shape: recorded, go on
                row["error"] = _error_text(e)
            _free(self.device)
        self.save(row)
        self.log(f"{_ctx(context)} {mode} dense step: {_fmt(row['s'])} s {_note(row)}")

    def _measure_sparse(self, row: dict, calls: Any, handle: Any, step: Callable[[], Any], runs: int,
                        warmup: int) -> None:  # fmt: skip
        """Time `warmup` + `runs` calls of `step`, recording the engine's counters for each."""
        for i in range(warmup + runs):
            patterns, fast, masked = sum(handle.pattern_computations.values()), calls.fast, calls.masked_reference
            seconds, logits = self.timed(step)
            (row["warmup_s"] if i < warmup else row["times_s"]).append(seconds)
            row["patterns_added"].append(sum(handle.pattern_computations.values()) - patterns)
            row["fast_calls"].append(calls.fast - fast)
            row["masked_reference_calls"].append(calls.masked_reference - masked)
            if i == warmup + runs - 1:
                row["logits_finite"] = bool(torch.isfinite(logits).all())
            del logits
        got = {step_kind_from_counts(p, f, m, self.layers) for p, f, m in
               zip(row["patterns_added"], row["fast_calls"], row["masked_reference_calls"], strict=True)}  # fmt: skip
        row["check_ok"] = got == {row["kind"]}
        if not row["check_ok"]:
            raise RuntimeError(f"a {row['kind']} step ran as {', '.join(sorted(got))} (patterns added "
                               f"{row['patterns_added']}, fast calls {row['fast_calls']}, masked-reference calls "
                               f"{row['masked_reference_calls']}; {self.layers} layers)")  # fmt: skip

    def sparse_rows(self, context: int, mode: str, density: float) -> None:
        """The pattern step and the cached sparse step of one SparseD (mode, density) at one context."""
        pattern = _step_row(context, self.options, mode, density, "pattern")
        sparse = _step_row(context, self.options, mode, density, "sparse")
        pattern["skipped"] = sparse["skipped"] = self.over_budget()
        if pattern["skipped"] is None:
            current = pattern
            try:
                self.warm_sparse(context, mode, density)
                driver = self.driver(context)
                with self.mode(mode, density) as (handle, calls):
                    self.peak_reset()
                    self._measure_sparse(pattern, calls, handle, driver.pattern, self.options.pattern_repeats, 0)
                    pattern["engine_kind"], pattern["peak_gib"] = driver.last_kind, self.peak()
                    pattern["s"] = _median(pattern["times_s"])
                    current = sparse
                    self.peak_reset()
                    self._measure_sparse(sparse, calls, handle, driver.sparse, self.options.repeats, 1)
                    sparse["engine_kind"], sparse["peak_gib"] = driver.last_kind, self.peak()
                    sparse["s"] = _median(sparse["times_s"])
            except Exception as e:  # noqa: BLE001 — recorded in the row that was running, the run goes on
                current["error"] = _error_text(e)
                if current is pattern:
                    sparse["error"] = "no pattern step (see the pattern row)"
            _free(self.device)
        for row in (pattern, sparse):
            self.save(row)
            self.log(f"{_ctx(context)} {mode} d={density:g} {row['kind']} step: {_fmt(row['s'])} s "
                     f"({_fmt(row['vs_dense_cudnn'], 2, '×')} vs dense-cudnn) {_note(row)}")  # fmt: skip

    def step_section(self, context: int) -> None:
        for mode in self.options.modes:
            if MODES[mode][0] == "dense":
                self.dense_row(context, mode)
        for mode in self.options.modes:
            if MODES[mode][0] == "sparse":
                for density in self.options.densities:
                    self.sparse_rows(context, mode, density)

    # -- whole generations --------------------------------------------------------------------------------------
    def _estimate(self, row: dict) -> float | None:
        finish_row = dict(row)
        results = {"options": self.results["options"], "steps_rows": self.results["steps_rows"],
                   "generation_rows": [finish_row]}  # fmt: skip
        finish(results)
        return finish_row["composed_s"]

    def generation_row(self, context: int, mode: str, density: float | None) -> None:
        """One whole DiffusionLMPipeline generation (LLaDA sampling; SparseD in the sparse modes), per-step timed."""
        row = _gen_row(context, self.options, mode, density)
        row["expected_kinds"] = expected_kinds(mode, self.options.gen_steps, self.options.full_steps)
        row["estimate_s"] = self._estimate(row)
        row["skipped"] = self.over_budget(row["estimate_s"])
        if row["skipped"] is None:
            try:
                self._generate(row, context, mode, density)
            except Exception as e:  # noqa: BLE001 — recorded, the run goes on
                row["error"] = _error_text(e)
            _free(self.device)
        self.save(row)
        self.log(f"{_ctx(context)} {mode} {'' if density is None else f'd={density:g} '}generation: "
                 f"{_fmt(row['s'], 2)} s ({_fmt(row['vs_dense_cudnn'], 2, '×')} vs dense-cudnn; composed "
                 f"{_fmt(row['composed_s'], 2)} s) {_note(row)}")  # fmt: skip

    def _generate(self, row: dict, context: int, mode: str, density: float | None) -> None:
        sparse = MODES[mode][0] == "sparse"
        if sparse:
            self.warm_sparse(context, mode, density)
        elif (context, mode) not in self.warmed:
            with self.mode(mode, None):
                self.timed(self.driver(context).dense)
            self.warmed.add((context, mode))
        prompt = prompt_ids(context, self.options, self.model.config.vocab_size, self.device)
        with self.mode(mode, density) as (handle, calls):
            marks: list[tuple[float, int, int, int]] = []  # (time, patterns, fast, masked) after each step

            def counters() -> tuple[int, int, int]:
                if handle is None:
                    return 0, 0, 0
                return sum(handle.pattern_computations.values()), calls.fast, calls.masked_reference

            def on_step_end(pipe: Any, step: int, step_in_block: int, tensors: dict) -> dict:
                _sync(self.device)
                marks.append((time.perf_counter(), *counters()))
                return {}

            self.peak_reset()
            _sync(self.device)
            marks.append((time.perf_counter(), *counters()))
            start = marks[0][0]
            out = self.pipe(input_ids=prompt, gen_length=self.options.gen_length, steps=self.options.gen_steps,
                            block_length=self.options.gen_length, callback_on_step_end=on_step_end)  # fmt: skip
            _sync(self.device)
            row["s"] = time.perf_counter() - start
            row["peak_gib"] = self.peak()
            del out
        for before, after in zip(marks, marks[1:], strict=False):
            row["step_times_s"].append(after[0] - before[0])
            deltas = [a - b for a, b in zip(after[1:], before[1:], strict=True)]
            row["step_kinds"].append(step_kind_from_counts(*deltas, self.layers) if sparse else "dense")
        row["patterns_added"] = marks[-1][1] - marks[0][1]
        row["kinds_ok"] = row["step_kinds"] == row["expected_kinds"]
        by_kind = {k: [t for t, kk in zip(row["step_times_s"], row["step_kinds"], strict=True) if kk == k]
                   for k in ("dense", "pattern", "sparse")}  # fmt: skip
        row["dense_step_s"], row["pattern_step_s"] = _median(by_kind["dense"]), _median(by_kind["pattern"])
        row["sparse_step_s"] = _median(by_kind["sparse"])
        if not row["kinds_ok"]:
            raise RuntimeError(f"the generation's steps ran as {row['step_kinds']}, expected {row['expected_kinds']}")

    def generation_section(self, context: int) -> None:
        for mode in self.options.gen_modes:
            if MODES[mode][0] == "dense":
                self.generation_row(context, mode, None)
        for mode in self.options.gen_modes:
            if MODES[mode][0] == "sparse":
                for density in self.options.densities:
                    self.generation_row(context, mode, density)


def _versions() -> dict:
    import diffusers
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton ships with CUDA torch
        triton_version = None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
            "triton": triton_version}  # fmt: skip


def _environment(device: torch.device, dtype: torch.dtype, command: str, options: DLMOptions, config: Any,
                 real_size: bool) -> dict:  # fmt: skip
    """Versions, device, model shape and definitions: the JSON header."""
    from .. import __version__

    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else f"{device.type} ({platform.processor() or 'cpu'})"
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
            "rope_parameters", "tie_word_embeddings", "use_bidirectional_attention", "is_causal")  # fmt: skip
    layers = config.num_hidden_layers
    description = (f"LLaDA-8B-shaped GemmaForCausalLM, {layers} layers"
                   + (", real-size" if real_size else ", not real-size") + ", random weights")  # fmt: skip
    return {
        "benchmark": "diffusion LM (issue #9)", "command": command, "argv": sys.argv, "gpu": gpu,
        "gpu_tag": gpu_tag(gpu), **_versions(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
        "unbottle": __version__, "git_commit": _git_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(dtype).removeprefix("torch."), "batch": 1, "options": dataclasses.asdict(options),
        "model": {"description": description, "real_size": real_size,
                  "config": {k: getattr(config, k, None) for k in keys}, "parameters": parameter_count(config),
                  "is_causal": None},
        "modes": {m: f"{fam}: dense steps under sdpa_kernel({b})" + (f", sparse steps on {k}" if k else "")
                  for m, (fam, b, k) in MODES.items()},
        "timing": TIMING_DEFINITION, "target": None, "setup_s": None, "weights_gib": None, "setup_error": None,
        "steps_rows": [], "generation_rows": [], "composed": [],
    }  # fmt: skip


def run_benchmark(
    options: DLMOptions, out_dir: str | Path, command: str, device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16, model_overrides: dict | None = None, log: Callable[[str], None] = _log,
) -> dict:  # fmt: skip
    """Build the LLaDA-8B-shaped model and measure every row (SparseD vs dense, Wang et al. 2025); outputs rewritten
    after each. `model_overrides` replace GemmaConfig keywords (the CPU tests pass a tiny width)."""
    started = time.perf_counter()
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = llada_config(options.layers, **(model_overrides or {}))
    results = _environment(device, dtype, command, options, config,
                           real_size=options.layers == LAYERS and not model_overrides)  # fmt: skip
    write_outputs(results, out_dir)
    runner = None
    model = None
    try:
        _sync(device)
        t0 = time.perf_counter()
        model = build_model(config, device, dtype, options.seed)
        _sync(device)
        results["setup_s"] = round(time.perf_counter() - t0, 2)
        results["model"]["parameters"] = sum(p.numel() for p in model.parameters())
        causal = {m.is_causal for m in model.modules() if hasattr(m, "is_causal") and hasattr(m, "q_proj")}
        results["model"]["is_causal"] = causal.pop() if len(causal) == 1 else sorted(causal)
        if results["model"]["is_causal"] is not False:
            raise RuntimeError(f"the attention modules are causal ({results['model']['is_causal']}): this "
                               "transformers' GemmaConfig ignores use_bidirectional_attention")  # fmt: skip
        results["weights_gib"] = _gib(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
        runner = _Runner(model, options, device, results, out_dir, log, started)
        runner.log(f"{results['model']['description']} ({results['model']['parameters'] / 1e9:.2f}B) built in "
                   f"{results['setup_s']:.1f} s on {results['gpu']}; contexts "
                   f"{', '.join(map(_ctx, options.contexts))}, budget {options.budget_s:g} s")  # fmt: skip
    except Exception as e:  # noqa: BLE001 — e.g. out of memory: the report says so
        results["setup_error"] = _error_text(e)
        log(f"dlm: setup: {results['setup_error']}")
    for context in options.contexts if runner is not None else ():  # a context's generations right after its steps
        if "steps" in options.sections:
            runner.step_section(context)
        if context in options.generation_contexts:
            runner.generation_section(context)
    del runner, model
    gc.collect()
    _free(device)
    finish(results)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    paths = write_outputs(results, out_dir)
    log("dlm: wrote " + ", ".join(str(p) for p in paths.values()))
    return results


# ---- arguments ----------------------------------------------------------------------------------------------------


def parse_contexts(text: str, option: str = "--contexts") -> list[int]:
    """Token counts, comma-separated, `8192` or `8k` (× 1024); `none` for an empty list (errors name `option`)."""
    if text.strip().lower() == "none":
        return []
    values = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            value = int(part[:-1]) * 1024 if part.endswith("k") else int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes token counts like 8192 or 8k, got {part!r}") from None
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"{option} takes token counts like 8192 or 8k, got {text!r}")
    return values


def parse_modes(text: str) -> list[str]:
    """Mode names, comma-separated, from MODES (dense SDPA backends, SparseD on FlexAttention / Triton)."""
    return parse_names(text, MODES, "--modes")


def parse_gen_modes(text: str) -> list[str]:
    """Whole-generation mode names from MODES, or `none`."""
    return [] if text.strip().lower() == "none" else parse_names(text, MODES, "--gen-modes")


def parse_sections(text: str) -> list[str]:
    """Sections to run, from `steps` and `generation`."""
    return parse_names(text, SECTIONS, "--sections")


def _share(parser: argparse.ArgumentParser, flag: str, help_text: str, **kwargs: Any) -> None:
    """Add `flag`, or append this suite's meaning to its help where another suite added it already."""
    action = parser._option_string_actions.get(flag)
    if action is not None:
        action.help = f"{action.help}; {help_text}"
    else:
        parser.add_argument(flag, help=help_text, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The diffusion-LM benchmark's options (SparseD on LLaDA-8B shapes, issue #9); shared flags get a dlm: note."""
    quick = (f"dlm: contexts {','.join(map(str, QUICK_CONTEXTS))}, {QUICK_REPEATS} repeats, "
             f"{QUICK_GEN_STEPS} generation steps")  # fmt: skip
    share_quick_and_seed(parser, quick, "dlm: seed of the weights and prompts")
    densities = ",".join(map(str, DENSITIES))
    _share(parser, "--densities", f"dlm: SparseD densities, in (0, 1) (default {densities})", type=parse_densities,
           metavar="D,...")  # fmt: skip
    _share(parser, "--repeats", f"dlm: timed dense / cached sparse steps per row (default {REPEATS}; --quick "
           f"{QUICK_REPEATS})", type=int, metavar="N")  # fmt: skip
    contexts = ",".join(map(str, CONTEXTS))
    parser.add_argument("--contexts", type=parse_contexts, metavar="C,...",
                        help=f"dlm: contexts, prompt + generated tokens (default {contexts})")  # fmt: skip
    parser.add_argument("--gen-contexts", type=lambda t: parse_contexts(t, "--gen-contexts"), metavar="C,...|none",
                        help="dlm: contexts with whole-generation rows (default all)")  # fmt: skip
    parser.add_argument("--gen-length", type=int, default=GEN_LENGTH, metavar="N",
                        help=f"dlm: generated (mask) tokens (default {GEN_LENGTH})")  # fmt: skip
    steps = f"dlm: denoising steps of a generation (default {GEN_STEPS}; --quick {QUICK_GEN_STEPS})"
    parser.add_argument("--gen-steps", type=int, metavar="T", help=steps)
    layers = f"dlm: transformer layers (default {LAYERS}, LLaDA-8B's; e.g. 2 for a smoke run)"
    parser.add_argument("--layers", type=int, default=LAYERS, metavar="N", help=layers)
    parser.add_argument("--modes", type=parse_modes, metavar="M,...",
                        help=f"dlm: per-step modes, of {', '.join(MODES)} (default all)")  # fmt: skip
    parser.add_argument("--gen-modes", type=parse_gen_modes, metavar="M,...|none",
                        help=f"dlm: whole-generation modes (default {','.join(DEFAULT_GEN_MODES)})")  # fmt: skip
    pattern = f"dlm: timed pattern steps per row, each a new generation (default {PATTERN_REPEATS})"
    parser.add_argument("--pattern-repeats", type=int, default=PATTERN_REPEATS, metavar="N", help=pattern)
    parser.add_argument("--sections", type=parse_sections, metavar="S,...",
                        help="dlm: steps (per-step rows), generation (whole generations) (default both)")  # fmt: skip
    budget = f"dlm: seconds after which the remaining rows are skipped (default {BUDGET_S:g})"
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, metavar="S", help=budget)


_FLAGS = {"contexts": "--contexts", "gen_contexts": "--gen-contexts", "gen_length": "--gen-length",
          "gen_steps": "--gen-steps", "layers": "--layers", "modes": "--modes", "gen_modes": "--gen-modes",
          "densities": "--densities", "repeats": "--repeats", "pattern_repeats": "--pattern-repeats",
          "sections": "--sections", "budget_s": "--budget-s", "seed": "--seed"}  # fmt: skip


def options_from_args(args: argparse.Namespace) -> DLMOptions:
    """DLMOptions from parsed arguments (`unbottle bench dlm` or bench/diffusion_lm.py); UsageError naming the flag."""
    from ..cli.errors import UsageError

    quick = bool(getattr(args, "quick", False))

    def given(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    gen_contexts = getattr(args, "gen_contexts", None)
    gen_modes = getattr(args, "gen_modes", None)
    try:
        return DLMOptions(
            contexts=tuple(given("contexts", None) or (QUICK_CONTEXTS if quick else CONTEXTS)),
            gen_contexts=None if gen_contexts is None else tuple(gen_contexts),
            gen_length=given("gen_length", GEN_LENGTH),
            gen_steps=given("gen_steps", QUICK_GEN_STEPS if quick else GEN_STEPS),
            layers=given("layers", LAYERS), modes=tuple(given("modes", None) or DEFAULT_MODES),
            gen_modes=DEFAULT_GEN_MODES if gen_modes is None else tuple(gen_modes),
            densities=tuple(float(d) for d in (given("densities", None) or DENSITIES)),
            repeats=given("repeats", QUICK_REPEATS if quick else REPEATS),
            pattern_repeats=given("pattern_repeats", PATTERN_REPEATS),
            sections=tuple(given("sections", None) or SECTIONS), budget_s=float(given("budget_s", BUDGET_S)),
            seed=given("seed", 0), quick=quick,
        )  # fmt: skip
    except OptionError as e:
        raise UsageError(f"{_FLAGS.get(e.field, e.field)}: {e}") from e


# ---- entry points -------------------------------------------------------------------------------------------------


def failed_rows(results: dict) -> list[dict]:
    """Rows that recorded an error (skipped rows are not failures)."""
    return [r for r in results.get("steps_rows", []) + results.get("generation_rows", []) if r.get("error")]


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench dlm` (SparseD on LLaDA-8B shapes, issue #9): refuse without CUDA (exit 2), run, exit 1 if a
    row failed."""
    from ..cli.errors import RunError

    results = script.run_and_print(args, command, NO_CUDA_MESSAGE, options_from_args, run_benchmark,
                                   lambda r: f"{output_stem(r)}.md")  # fmt: skip
    failed = failed_rows(results)
    if results.get("setup_error"):
        raise RunError(f"setup failed: {results['setup_error']}")
    if failed:
        where = ", ".join(f"{r['section']} {_ctx(r['context'])} {r['mode']} {_density(r['density'])}" for r in failed)
        raise RunError(f"{len(failed)} row(s) failed (errors in the report): {where}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of bench/diffusion_lm.py: -o plus the dlm options (SparseD, Wang et al. 2025)."""
    return script.build_parser(prog, __doc__.splitlines()[0], add_arguments)


def main(argv: Sequence[str] | None = None, prog: str = "bench/diffusion_lm.py") -> int:
    """Entry point of bench/diffusion_lm.py (SparseD on LLaDA-8B shapes); exit 2 without CUDA, 1 if a row failed."""
    return script.script_main(None if argv is None else list(argv), prog, build_parser(prog), run_from_cli)

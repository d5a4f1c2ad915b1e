"""Diffusion-LM benchmark: LLaDA-8B-shaped masked-diffusion generation, dense SDPA vs SparseD.

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
never the dense-masked PyTorch reference (`engine.run_block_sparse`); every sparse row counts both kinds of call to
prove it.

Modes:
- `dense-cudnn`, `dense-flash`: the stock model under `sdpa_kernel(CUDNN_ATTENTION)` / `sdpa_kernel(FLASH_ATTENTION)`.
- `sparsed-flex`: SparseD (Wang et al., 2025) on the engine's own path, `unbottle.enable_sparse_attention(model,
  SparseAttentionConfig(density=d, pattern="cached", reshape=False, block_size=128, full_steps=0.2))`: dense steps
  call the original sdpa, sparse steps compiled FlexAttention (`block_sparse_attention_flex`) over per-head block
  patterns computed once per generation at the first sparse step (the pattern step) and reused.
- `sparsed-triton`: the same, with the engine's block-sparse call routed to `block_sparse_attention_triton`
  (`route_sparse_attention`, through the engine's `block_sparse_kernels`).
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
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import RunError
from .. import measure, script
from ..measure import error_text, free, gib, peak_gib, peak_reset, sync, timed
from ..results import close_run, environment, fmt
from .model import LAYERS, build_model, llada_config, parameter_count, schedule_counts, sparse_config
from .options import MODES, NO_CUDA_MESSAGE, TIMING_DEFINITION, DLMOptions, add_arguments, options_from_args
from .report import context_label, density_label, failed_rows, finish, median, output_stem, row_note, write_outputs
from .steps import StepDriver, expected_kinds, kernel_route, prompt_ids, sdpa_backend, step_kind_from_counts

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


# ---- the run -----------------------------------------------------------------------------------------------------


class _Runner:
    """One benchmark run: the model, its pipeline, the clock and budget, the warmed shapes, the results."""

    def __init__(self, model: Any, options: DLMOptions, device: torch.device, results: dict, out_dir: Path,
                 log: Callable[[str], None], started: float) -> None:  # fmt: skip
        from ...pipelines.diffusion_lm import DiffusionLMPipeline

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
        from ...attention_processors import disable_sparse_attention, enable_sparse_attention

        family, backend, _ = MODES[mode]
        with sdpa_backend(backend, self.device):
            if family == "dense":
                yield None, None
                return
            handle = enable_sparse_attention(self.model, sparse_config(self.options, density, pattern))
            try:
                with kernel_route(mode) as calls:
                    yield handle, calls
            finally:
                disable_sparse_attention(self.model)

    def peak_reset(self) -> None:
        peak_reset(self.device)

    def peak(self) -> float | None:
        return peak_gib(self.device)

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        return timed(fn, self.device)

    @torch.no_grad()
    def warm_sparse(self, context: int, mode: str, density: float) -> None:
        """Compile / autotune the mode's kernel as the engine calls it (a "window" sparse forward at this density) and
        run the exact attention with LSE on the pattern step's shapes (SparseD), once per (context, mode)."""
        from ...attention_processors.block_sparse import dense_attention_with_lse

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
        sync(self.device)
        t0 = time.perf_counter()
        dense_attention_with_lse(q, k, v)  # the pattern step's exact attention over all keys
        dense_attention_with_lse(q, k[:, :, g0:], v[:, :, g0:])  # and over the generated region's keys
        sync(self.device)
        extra = time.perf_counter() - t0
        del q, k, v
        free(self.device)
        self.warmed.add((context, mode))
        self.log(f"{context_label(context)} {mode}: kernel warm-up {seconds:.2f} s (window-pattern forward) + "
                 f"{extra:.2f} s (exact attention with LSE)")  # fmt: skip

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
                row["s"] = median(row["times_s"])
                row["peak_gib"] = self.peak()
            except Exception as e:  # noqa: BLE001 — out of memory, a backend refusing the shape: recorded, go on
                row["error"] = error_text(e)
            free(self.device)
        self.save(row)
        self.log(f"{context_label(context)} {mode} dense step: {fmt(row['s'], 3)} s {row_note(row)}")

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
                    pattern["s"] = median(pattern["times_s"])
                    current = sparse
                    self.peak_reset()
                    self._measure_sparse(sparse, calls, handle, driver.sparse, self.options.repeats, 1)
                    sparse["engine_kind"], sparse["peak_gib"] = driver.last_kind, self.peak()
                    sparse["s"] = median(sparse["times_s"])
            except Exception as e:  # noqa: BLE001 — recorded in the row that was running, the run goes on
                current["error"] = error_text(e)
                if current is pattern:
                    sparse["error"] = "no pattern step (see the pattern row)"
            free(self.device)
        for row in (pattern, sparse):
            self.save(row)
            self.log(f"{context_label(context)} {mode} d={density:g} {row['kind']} step: {fmt(row['s'], 3)} s "
                     f"({fmt(row['vs_dense_cudnn'], 2, '×')} vs dense-cudnn) {row_note(row)}")  # fmt: skip

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
                row["error"] = error_text(e)
            free(self.device)
        self.save(row)
        self.log(f"{context_label(context)} {mode} {'' if density is None else f'd={density:g} '}generation: "
                 f"{fmt(row['s'], 2)} s ({fmt(row['vs_dense_cudnn'], 2, '×')} vs dense-cudnn; composed "
                 f"{fmt(row['composed_s'], 2)} s) {row_note(row)}")  # fmt: skip

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
                sync(self.device)
                marks.append((time.perf_counter(), *counters()))
                return {}

            self.peak_reset()
            sync(self.device)
            marks.append((time.perf_counter(), *counters()))
            start = marks[0][0]
            out = self.pipe(input_ids=prompt, gen_length=self.options.gen_length, steps=self.options.gen_steps,
                            block_length=self.options.gen_length, callback_on_step_end=on_step_end)  # fmt: skip
            sync(self.device)
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
        row["dense_step_s"], row["pattern_step_s"] = median(by_kind["dense"]), median(by_kind["pattern"])
        row["sparse_step_s"] = median(by_kind["sparse"])
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


def _environment(device: torch.device, dtype: torch.dtype, command: str, options: DLMOptions, config: Any,
                 real_size: bool) -> dict:  # fmt: skip
    """Versions, device, model shape and definitions: the JSON header."""
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
            "rope_parameters", "tie_word_embeddings", "use_bidirectional_attention", "is_causal")  # fmt: skip
    layers = config.num_hidden_layers
    description = (f"LLaDA-8B-shaped GemmaForCausalLM, {layers} layers"
                   + (", real-size" if real_size else ", not real-size") + ", random weights")  # fmt: skip
    return {
        **environment("diffusion LM", command, device, ("transformers", "diffusers", "triton"), cudnn=True),
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
    dtype: torch.dtype = torch.bfloat16, model_overrides: dict | None = None, log: Callable[[str], None] = measure.log,
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
        sync(device)
        t0 = time.perf_counter()
        model = build_model(config, device, dtype, options.seed)
        sync(device)
        results["setup_s"] = round(time.perf_counter() - t0, 2)
        results["model"]["parameters"] = sum(p.numel() for p in model.parameters())
        causal = {m.is_causal for m in model.modules() if hasattr(m, "is_causal") and hasattr(m, "q_proj")}
        results["model"]["is_causal"] = causal.pop() if len(causal) == 1 else sorted(causal)
        if results["model"]["is_causal"] is not False:
            raise RuntimeError(f"the attention modules are causal ({results['model']['is_causal']}): this "
                               "transformers' GemmaConfig ignores use_bidirectional_attention")  # fmt: skip
        results["weights_gib"] = gib(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
        runner = _Runner(model, options, device, results, out_dir, log, started)
        runner.log(f"{results['model']['description']} ({results['model']['parameters'] / 1e9:.2f}B) built in "
                   f"{results['setup_s']:.1f} s on {results['gpu']}; contexts "
                   f"{', '.join(map(context_label, options.contexts))}, budget {options.budget_s:g} s")  # fmt: skip
    except Exception as e:  # noqa: BLE001 — e.g. out of memory: the report says so
        results["setup_error"] = error_text(e)
        log(f"dlm: setup: {results['setup_error']}")
    for context in options.contexts if runner is not None else ():  # a context's generations right after its steps
        if "steps" in options.sections:
            runner.step_section(context)
        if context in options.generation_contexts:
            runner.generation_section(context)
    del runner, model
    gc.collect()
    free(device)
    finish(results)
    close_run(results, started, lambda r: write_outputs(r, out_dir), log, prefix="dlm: ")
    return results


# ---- entry points -------------------------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace, command: str | None = None) -> int:
    """`unbottle bench dlm` (SparseD on LLaDA-8B shapes): refuse without CUDA (exit 2), run, exit 1 if a
    row failed."""
    results = script.run_and_print(args, command, NO_CUDA_MESSAGE, options_from_args, run_benchmark,
                                   lambda r: f"{output_stem(r)}.md")  # fmt: skip
    failed = failed_rows(results)
    if results.get("setup_error"):
        raise RunError(f"setup failed: {results['setup_error']}")
    if failed:
        where = ", ".join(f"{r['section']} {context_label(r['context'])} {r['mode']} {density_label(r['density'])}"
                          for r in failed)  # fmt: skip
        raise RunError(f"{len(failed)} row(s) failed (errors in the report): {where}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of bench/diffusion_lm.py: -o plus the dlm options (SparseD, Wang et al. 2025)."""
    return script.build_parser(prog, __doc__.splitlines()[0], add_arguments)


def main(argv: Sequence[str] | None = None, prog: str = "bench/diffusion_lm.py") -> int:
    """Entry point of bench/diffusion_lm.py (SparseD on LLaDA-8B shapes); exit 2 without CUDA, 1 if a row failed."""
    return script.script_main(None if argv is None else list(argv), prog, build_parser(prog), run_from_cli)

"""What the diffusion-LM benchmark runs (SparseD on LLaDA-8B shapes, Wang et al. 2025): contexts, modes, densities,
steps, repeats, budget, and its command-line options."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from ...errors import UsageError
from ..script import parse_densities, parse_names
from .model import LAYERS, MAX_POSITIONS, schedule_counts

NO_CUDA_MESSAGE = "the diffusion-LM benchmark needs a CUDA GPU; torch sees none here"
CONTEXTS: tuple[int, ...] = (8192, 16384, 32768, 65536)
QUICK_CONTEXTS: tuple[int, ...] = (8192, 16384)
GEN_LENGTH, GEN_STEPS, QUICK_GEN_STEPS = 256, 16, 8
REPEATS, QUICK_REPEATS, PATTERN_REPEATS = 3, 2, 1
DENSITIES: tuple[float, ...] = (0.3, 0.1)  # SparseD's long-context select (0.3), and a sparser setting
FULL_STEPS = 0.2  # SparseD's skip: the first 20% of the steps are dense
BLOCK_SIZE = 128  # SparseD's long-context block size = FlexAttention's tile
MASK_TOKEN_ID = 126336  # LLaDA-8B's mask token
BUDGET_S = 420.0
COMPOSED_STEPS: tuple[int, ...] = (128, 1024)  # SparseD's latency settings (T=128 in Fig. 4, 1,024 for its 1.50×)
TARGET_CONTEXT, TARGET_SPEEDUP = 65536, 2.0  # the target: ≥ 2× over dense at 64k
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The diffusion-LM benchmark's options (SparseD on LLaDA-8B shapes)."""
    quick = (f"contexts {','.join(map(str, QUICK_CONTEXTS))}, {QUICK_REPEATS} repeats, {QUICK_GEN_STEPS} generation "
             "steps")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts (default 0)")
    densities = ",".join(map(str, DENSITIES))
    parser.add_argument("--densities", type=parse_densities, metavar="D,...",
                        help=f"SparseD densities, in (0, 1) (default {densities})")  # fmt: skip
    parser.add_argument("--repeats", type=int, metavar="N",
                        help=f"timed dense / cached sparse steps per row (default {REPEATS}; --quick {QUICK_REPEATS})")
    contexts = ",".join(map(str, CONTEXTS))
    parser.add_argument("--contexts", type=parse_contexts, metavar="C,...",
                        help=f"contexts, prompt + generated tokens (default {contexts})")  # fmt: skip
    parser.add_argument("--gen-contexts", type=lambda t: parse_contexts(t, "--gen-contexts"), metavar="C,...|none",
                        help="contexts with whole-generation rows (default all)")  # fmt: skip
    parser.add_argument("--gen-length", type=int, default=GEN_LENGTH, metavar="N",
                        help=f"generated (mask) tokens (default {GEN_LENGTH})")  # fmt: skip
    steps = f"denoising steps of a generation (default {GEN_STEPS}; --quick {QUICK_GEN_STEPS})"
    parser.add_argument("--gen-steps", type=int, metavar="T", help=steps)
    layers = f"transformer layers (default {LAYERS}, LLaDA-8B's; e.g. 2 for a smoke run)"
    parser.add_argument("--layers", type=int, default=LAYERS, metavar="N", help=layers)
    parser.add_argument("--modes", type=parse_modes, metavar="M,...",
                        help=f"per-step modes, of {', '.join(MODES)} (default all)")  # fmt: skip
    parser.add_argument("--gen-modes", type=parse_gen_modes, metavar="M,...|none",
                        help=f"whole-generation modes (default {','.join(DEFAULT_GEN_MODES)})")  # fmt: skip
    pattern = f"timed pattern steps per row, each a new generation (default {PATTERN_REPEATS})"
    parser.add_argument("--pattern-repeats", type=int, default=PATTERN_REPEATS, metavar="N", help=pattern)
    parser.add_argument("--sections", type=parse_sections, metavar="S,...",
                        help="steps (per-step rows), generation (whole generations) (default both)")  # fmt: skip
    budget = f"seconds after which the remaining rows are skipped (default {BUDGET_S:g})"
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, metavar="S", help=budget)


_FLAGS = {"contexts": "--contexts", "gen_contexts": "--gen-contexts", "gen_length": "--gen-length",
          "gen_steps": "--gen-steps", "layers": "--layers", "modes": "--modes", "gen_modes": "--gen-modes",
          "densities": "--densities", "repeats": "--repeats", "pattern_repeats": "--pattern-repeats",
          "sections": "--sections", "budget_s": "--budget-s", "seed": "--seed"}  # fmt: skip


def options_from_args(args: argparse.Namespace) -> DLMOptions:
    """DLMOptions from parsed arguments (`unbottle bench dlm` or bench/diffusion_lm.py); UsageError naming the flag."""
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

"""`--parallel ulysses` of `image` and `video`: the verb on every process torchrun starts, the denoiser under
diffusers' context parallelism (Ulysses, one share of the heads per rank), the same seed everywhere, rank 0 writing."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import RunError, UsageError

LAUNCH = "run it under torchrun --nproc-per-node N (N ≥ 2 processes)"


def add_option(sub: argparse.ArgumentParser) -> None:
    """Add `--parallel {ulysses}` to a generation verb."""
    sub.add_argument("--parallel", choices=["ulysses"],
                     help="context parallelism over the processes torchrun starts (torchrun --nproc-per-node N "
                     "-m unbottle ...): each rank denoises its share of the heads; rank 0 writes")  # fmt: skip


@dataclass(frozen=True)
class World:
    """The torchrun processes: how many, this one's global rank and its rank on this host."""

    size: int
    rank: int
    local_rank: int


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name)
    if text is None:
        raise UsageError(f"--parallel: {name} is not set, so this is not a torchrun process; {LAUNCH}")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--parallel: {name}={text!r} is not an integer; {LAUNCH}") from None


def torchrun_world(environ: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK; a UsageError naming --parallel without it."""
    environ = os.environ if environ is None else environ
    size = _env_int(environ, "WORLD_SIZE")
    if size < 2:
        raise UsageError(f"--parallel: WORLD_SIZE={size}, allowed ≥ 2 processes; {LAUNCH}")
    rank, local_rank = _env_int(environ, "RANK"), _env_int(environ, "LOCAL_RANK")
    if not 0 <= rank < size or local_rank < 0:
        raise UsageError(f"--parallel: RANK={rank}, LOCAL_RANK={local_rank}, allowed RANK in [0, {size - 1}] and "
                         f"LOCAL_RANK ≥ 0; {LAUNCH}")  # fmt: skip
    return World(size, rank, local_rank)


def rank_device(device: str, world: World) -> str:
    """This rank's device: CUDA device LOCAL_RANK where `device` is CUDA, else `device` (the CPU)."""
    return f"cuda:{world.local_rank}" if torch.device(device).type == "cuda" else device


@contextmanager
def process_group(world: World, device: str) -> Iterator[None]:
    """torch.distributed initialized for the run (nccl on CUDA, on device LOCAL_RANK; gloo on the CPU), destroyed
    after it, also on errors."""
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise UsageError(f"--parallel: LOCAL_RANK={world.local_rank}, but this host has "
                             f"{torch.cuda.device_count()} CUDA devices; {LAUNCH} with N ≤ the devices")  # fmt: skip
        torch.cuda.set_device(world.local_rank)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)
    except (RuntimeError, ValueError) as e:
        raise RunError(f"--parallel: the process group did not start: {str(e).splitlines()[0]}") from e
    try:
        yield
    finally:
        dist.destroy_process_group()


def _planned_families() -> str:
    """Names of the registered families whose denoisers have a context-parallel plan (diffusers' or the record's)."""
    import diffusers

    from ..families import registered_families

    def planned(name: str) -> bool:
        try:
            return getattr(getattr(diffusers, name, None), "_cp_plan", None) is not None
        except (ImportError, AttributeError, RuntimeError):
            return False

    return ", ".join(f.name for f in registered_families()
                     if f.parallel_plan is not None or any(planned(c) for c in f.model_classes))  # fmt: skip


def enable_ulysses(pipe: object, world: World) -> None:
    """Put the pipeline's transformer under Ulysses over the whole world (before sparse attention is enabled); a
    RunError for a model with no plan, a UsageError for heads the world size does not divide."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    from ..attention_processors.ulysses_sdpa import ulysses_modules
    from ..families import parallel_plan
    from ..families.parallel import no_plan_reason

    model = getattr(pipe, "transformer", None)
    if model is None or not hasattr(model, "enable_parallelism"):
        found = type(model if model is not None else pipe).__name__
        raise RunError(f"--parallel: {found} has no diffusers transformer to run under context parallelism; "
                       f"supported families: {_planned_families()}")  # fmt: skip
    plan = parallel_plan(model)
    if plan is None:
        raise RunError(f"--parallel: {type(model).__name__} has no context-parallel plan ({no_plan_reason(model)}); "
                       f"supported families: {_planned_families()}")  # fmt: skip
    heads = getattr(model.config, "num_attention_heads", None)
    if isinstance(heads, int) and heads % world.size:
        divisors = [d for d in range(2, heads + 1) if heads % d == 0]
        raise UsageError(f"--parallel: {type(model).__name__} has {heads} heads, which {world.size} processes do not "
                         f"divide (Ulysses gives each rank an equal share); allowed --nproc-per-node: a divisor of "
                         f"{heads} ({', '.join(map(str, divisors)) or 'none above 1'})")  # fmt: skip
    # unbottle's Ulysses attention lets the ranks share a sequence unevenly (SD3's 333 text tokens); diffusers' uneven
    # gathers need NCCL (gloo gathers equal shapes only), so gloo runs need lengths the ranks divide
    uneven = bool(ulysses_modules(model)) and dist.is_initialized() and dist.get_backend() == "nccl"
    try:
        config = ContextParallelConfig(ulysses_degree=world.size, ulysses_anything=uneven)
        model.enable_parallelism(config=config, cp_plan=plan)
    except ValueError as e:  # an attention backend without context parallelism
        raise RunError(f"--parallel: {e}") from e

"""Context parallelism on the CPU for the tests: `spawn(check, ...)` runs `check(rank, folder, *args)` in 2 gloo
processes and returns each rank's result (anything `torch.save` takes).

diffusers' `enable_parallelism` places rank r on `rank % torch.accelerator.device_count()`, zero on a machine without
an accelerator; the workers (never the package) report one device so the CPU mesh builds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank: int, world: int, folder: str, check: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # the shim: one "device" per process, the CPU
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # a collective one rank skipped fails, not hangs
    try:
        torch.save(check(rank, folder, *args), os.path.join(folder, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(check: Callable, *args: object, world: int = WORLD) -> list:
    """`check(rank, folder, *args)` on `world` gloo processes sharing the scratch `folder`; their results by rank."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(world, folder, check, args), nprocs=world, join=True)
        return [torch.load(os.path.join(folder, f"result{r}.pt"), weights_only=False) for r in range(world)]

"""Profile one stock and one sparse Wan2.1-1.3B-shaped step (the run behind the README's 58% attention share).

    python bench/profile_step.py      # on a CUDA GPU; prints torch.profiler tables sorted by CUDA time
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unbottle  # noqa: E402
from bench.sparse_step import wan_1_3b  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    model = wan_1_3b()
    latents = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)

    @torch.inference_mode()
    def step(t: int) -> None:
        model(latents, torch.tensor([float(t)], device="cuda"), text, return_dict=False)
        torch.cuda.synchronize()

    def table(t: int, rows: int) -> str:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(t)
        return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)

    step(999)
    print("STOCK\n" + table(999, 12))
    cfg = unbottle.SparseAttentionConfig(density=0.05, full_steps=0, refresh_every=0)
    unbottle.enable_sparse_attention(model, cfg)
    step(999)  # refresh: patterns and statistics
    step(998)
    print("SPARSE\n" + table(997, 15))


if __name__ == "__main__":
    main()

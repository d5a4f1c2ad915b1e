"""Shared finishing step for the tiny fixtures: device/dtype placement, eval mode, quiet progress bars."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline


def finish_pipeline(pipe: DiffusionPipeline, device: str | torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """Move a freshly built tiny pipeline to `device`/`dtype`, put every module in eval mode, silence its bar."""
    pipe = pipe.to(device)
    if dtype != torch.float32:  # modules are built in fp32; a no-op cast would only trigger diffusers' warnings
        pipe = pipe.to(dtype=dtype)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe

"""The embedded default models that every CLI verb runs on when no `--model` is given (offline, CPU, seconds).

Until the trained "shapes" models land (issue #4), the defaults are the tiny random-weight fixtures of
`unbottle.testing`: the code paths are real (stock `WanPipeline` and `DiffusionGemmaPipeline`), the pictures are
noise and the text is random words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EmbeddedDefault:
    """One embedded default: how to build it and the call settings that suit its size."""

    description: str
    build: Callable[..., object]  # (device=..., dtype=...) -> pipeline
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int = 4
    sparse_block_size: int = 4  # tokens per sparse-attention block: the tiny default has few tokens per layer


def _tiny_wan(device: str | torch.device, dtype: torch.dtype) -> object:
    from .testing.video import tiny_wan_pipeline

    return tiny_wan_pipeline(device=device, dtype=dtype)


def _tiny_diffusion_gemma(device: str | torch.device, dtype: torch.dtype) -> object:
    from .testing.language import tiny_diffusion_gemma_pipeline

    return tiny_diffusion_gemma_pipeline(device=device, dtype=dtype)


EMBEDDED: dict[str, EmbeddedDefault] = {
    "image": EmbeddedDefault("tiny random-weight WanPipeline (1 frame; until the shapes models land)", _tiny_wan,
                             height=64, width=64, frames=1, steps=4),
    "video": EmbeddedDefault("tiny random-weight WanPipeline (until the shapes models land)", _tiny_wan,
                             height=64, width=64, frames=9, steps=4),
    "text": EmbeddedDefault("tiny random-weight DiffusionGemmaPipeline (until the shapes DLM lands)",
                            _tiny_diffusion_gemma, steps=4),
}  # fmt: skip


def load_default(kind: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> object:
    """Build the embedded default pipeline for `kind` ("image", "video" or "text")."""
    if kind not in EMBEDDED:
        raise ValueError(f"kind={kind!r} has no embedded default; choose one of {sorted(EMBEDDED)}")
    return EMBEDDED[kind].build(device, dtype)

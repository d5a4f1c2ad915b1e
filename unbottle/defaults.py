"""The embedded default models that every CLI verb runs on when no `--model` is given (offline, CPU, seconds).

They are the shipped "shapes" models (`unbottle.shapes.pretrained`): a stock `WanPipeline` trained on the
shapes world for `image` (1-frame videos) and `video`, and a bidirectional GemmaForCausalLM trained on key–value
retrieval in diffusers' `LLaDA2Pipeline` for `text` (prompts look like "k3 = v8 v91 ; ... query k3 ->").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class EmbeddedDefault:
    """One embedded default: how to build it and the call settings it was trained for."""

    description: str
    build: Callable[..., object]  # (device=..., dtype=...) -> pipeline
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int = 20
    guidance_scale: float | None = None
    sparse_block_size: int = 16  # tokens per sparse-attention block: a shapes image has 256 tokens per layer
    extra: tuple[tuple[str, object], ...] = field(default=())  # further call arguments (text decoding settings)


def _shapes_wan(device: str | torch.device, dtype: torch.dtype) -> object:
    from .shapes.pretrained import load_pipeline

    return load_pipeline("t2i", device=device, dtype=dtype)


def _shapes_dlm(device: str | torch.device, dtype: torch.dtype) -> object:
    from .shapes.pretrained import load_pipeline

    return load_pipeline("dlm", device=device, dtype=dtype)


def _dlm_extra() -> tuple[tuple[str, object], ...]:
    from .shapes.pretrained import call_defaults

    settings = dict(call_defaults("dlm"))
    return tuple((k, v) for k, v in settings.items() if k != "num_inference_steps")


EMBEDDED: dict[str, EmbeddedDefault] = {
    "image": EmbeddedDefault("the shapes text-to-image model (WanPipeline, 128 px)", _shapes_wan,
                             height=128, width=128, frames=1, steps=20, guidance_scale=4.0),
    "video": EmbeddedDefault("the shapes text-to-video model (WanPipeline, 128 px, 17 frames)", _shapes_wan,
                             height=128, width=128, frames=17, steps=20, guidance_scale=4.0, sparse_block_size=64),
    "text": EmbeddedDefault("the shapes retrieval diffusion LM (LLaDA2Pipeline)", _shapes_dlm, steps=4,
                            extra=_dlm_extra()),
}  # fmt: skip


def load_default(kind: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> object:
    """Build the embedded default pipeline for `kind` ("image", "video" or "text")."""
    if kind not in EMBEDDED:
        raise ValueError(f"kind={kind!r} has no embedded default; choose one of {sorted(EMBEDDED)}")
    return EMBEDDED[kind].build(device, dtype)

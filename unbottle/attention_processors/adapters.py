"""Per-family adapters: which attention modules are self-attention, and the token layout of a forward. No math here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .layout import TokenLayout


def _int(x) -> int:
    return int(x[0] if isinstance(x, (tuple, list)) else x)


def _timestep(bound: dict) -> float | None:
    t = bound.get("timestep")
    if t is None:
        return None
    return float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)


def _text_len(bound: dict) -> int:
    text = bound.get("encoder_hidden_states")
    return int(text.shape[1]) if isinstance(text, torch.Tensor) else 0


def _image_2d(model, bound, key="hidden_states"):  # (B, C, H, W) / patch
    p = _int(getattr(model.config, "patch_size", 1) or 1)
    h, w = bound[key].shape[-2:]
    return (1, h // p, w // p)


def _unet(model, bound):
    return TokenLayout(_image_2d(model, bound, "sample"))


def _sd3(model, bound):
    return TokenLayout(_image_2d(model, bound), _text_len(bound), text_first=False)


def _pixart(model, bound):
    return TokenLayout(_image_2d(model, bound))


def _flux(model, bound):
    ids = bound.get("img_ids")
    n = bound["hidden_states"].shape[1]
    if ids is None:
        return TokenLayout(None, _text_len(bound))
    ids = ids[0] if ids.dim() == 3 else ids  # (N, 3): (index, row, column)
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    return TokenLayout((1, h, w) if h * w == n else None, _text_len(bound), text_first=True)


def _cogvideox(model, bound):  # (B, F, C, H, W)
    f, _, h, w = bound["hidden_states"].shape[1:]
    p, pt = model.config.patch_size, model.config.patch_size_t or 1
    return TokenLayout(((f + pt - 1) // pt, h // p, w // p), _text_len(bound), text_first=True)


def _video_5d(model, bound):  # (B, C, F, H, W) with patch (t, h, w) or patch_size + patch_size_t
    f, h, w = bound["hidden_states"].shape[2:]
    patch = model.config.patch_size
    if isinstance(patch, (tuple, list)):
        pt, ph, pw = patch
    else:
        pt, ph, pw = getattr(model.config, "patch_size_t", 1) or 1, patch, patch
    return (f // pt, h // ph, w // pw)


def _wan(model, bound):
    return TokenLayout(_video_5d(model, bound))


def _hunyuan_video(model, bound):
    return TokenLayout(_video_5d(model, bound), _text_len(bound), text_first=False)


def _ltx(model, bound):
    p, pt = model.config.patch_size, model.config.patch_size_t
    return TokenLayout((bound["num_frames"] // pt, bound["height"] // p, bound["width"] // p))


@dataclass(frozen=True)
class FamilyAdapter:
    """How one model family exposes its self-attention: module names, and the layout of a forward's tokens."""

    family: str
    model_classes: tuple[str, ...]
    self_attention: str  # regex over module names (as in `model.attn_processors`, without ".processor")
    layout: Callable[[torch.nn.Module, dict], TokenLayout]

    def selects(self, name: str) -> bool:
        return re.search(self.self_attention, name) is not None

    def read_call(self, model: torch.nn.Module, bound: dict) -> tuple[float | None, TokenLayout | None]:
        """(timestep, layout) of one denoiser forward, from its bound arguments."""
        try:
            layout = self.layout(model, bound)
        except (KeyError, AttributeError, TypeError, ValueError, IndexError):
            layout = None  # an unusual call: patterns fall back to a 1-D sequence
        return _timestep(bound), layout


ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter("Flux", ("FluxTransformer2DModel",), r"^(single_)?transformer_blocks\.\d+\.attn$", _flux),
    FamilyAdapter("SD3", ("SD3Transformer2DModel",), r"^transformer_blocks\.\d+\.attn2?$", _sd3),
    FamilyAdapter("PixArt", ("PixArtTransformer2DModel",), r"^transformer_blocks\.\d+\.attn1$", _pixart),
    FamilyAdapter("CogVideoX", ("CogVideoXTransformer3DModel",), r"^transformer_blocks\.\d+\.attn1$", _cogvideox),
    FamilyAdapter("Wan", ("WanTransformer3DModel",), r"^blocks\.\d+\.attn1$", _wan),
    FamilyAdapter(
        "HunyuanVideo",
        ("HunyuanVideoTransformer3DModel",),
        r"^(single_)?transformer_blocks\.\d+\.attn$",
        _hunyuan_video,
    ),  # fmt: skip
    FamilyAdapter("LTX-Video", ("LTXVideoTransformer3DModel",), r"^transformer_blocks\.\d+\.attn1$", _ltx),
    FamilyAdapter("UNet SD/SDXL", ("UNet2DConditionModel",), r"\.attn1$", _unet),
)


def supported_families() -> str:
    return ", ".join(f"{a.family} ({'/'.join(a.model_classes)})" for a in ADAPTERS)


def adapter_for(model: torch.nn.Module) -> FamilyAdapter:
    """The adapter for `model`'s class (or a base class), else a ValueError listing the supported families."""
    names = {cls.__name__ for cls in type(model).__mro__}
    for adapter in ADAPTERS:
        if names.intersection(adapter.model_classes):
            return adapter
    raise ValueError(
        f"unbottle sparse attention does not support {type(model).__name__}; supported families: "
        f"{supported_families()}"
    )

"""Frozen open_clip models for rewards (CLIPScore, HPSv2, the aesthetic predictor's CLIP), built without downloads.

A model comes from an architecture name registered with open_clip ("ViT-H-14", "ViT-L-14", or any config added with
`open_clip.add_model_config`, such as a tiny test model) plus one of:
- a local checkpoint file (open_clip / .safetensors / a {"state_dict": ...} .pt),
- an open_clip pretrained tag ("laion2B-s32B-b79K"), resolved to the file the local hub cache already holds (never
  downloaded; a missing file is a FileNotFoundError with the `path="hf-hub:..."` that downloads it),
- an open_clip hub id "hf-hub:owner/name" (config and weights downloaded by open_clip, as the user asked),
- or an in-memory state dict (HPSv2's checkpoint).
The image transform (size, mean/std, interpolation, resize mode) is read from the model's own preprocess config.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .preprocess import ImagePreprocess
from .weights import WeightsFile, cached_file, is_hub_id, local_file, split_hub_id

OPEN_CLIP_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class _DropPrefix(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded" notice: here the weights are loaded right after."""
    root, quiet = logging.getLogger(), _DropPrefix(("No pretrained weights loaded", "Loaded built-in"))
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


@dataclass(frozen=True)
class OpenClipModel:
    """A frozen open_clip model with its tokenizer and differentiable image transform (CLIPScore / HPSv2 backbone)."""

    model: torch.nn.Module
    tokenizer: object
    transform: ImagePreprocess


def pretrained_file(model_name: str, pretrained: str, reward: str, cache_dir: str | Path | None = None) -> str:
    """The locally cached weights of an open_clip tag (ReNO's laion ViT-H-14); FileNotFoundError if absent."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == model_name) or "none"
        raise ValueError(f"{reward}: open_clip has no pretrained tag {pretrained!r} for {model_name!r} (tags: {tags})")
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = split_hub_id("hf-hub:" + hub)
        found = cached_file(repo, (filename,) if filename else OPEN_CLIP_WEIGHT_NAMES, cache_dir)
        if found is not None:
            return found
        spec = WeightsFile(reward, filename or OPEN_CLIP_WEIGHT_NAMES[0], repo)
        raise FileNotFoundError(
            f"{reward}: the open_clip weights {model_name} / {pretrained} are not in the local hub cache; "
            f"{spec.hint()}"
        )
    url = cfg.get("url", "")
    raise FileNotFoundError(
        f"{reward}: the open_clip weights {model_name} / {pretrained} are not available locally; download them "
        f"({url or 'see open_clip'}) and pass the file as path="
    )


def open_clip_weights(
    reward: str,
    path: str | Path | None,
    model_name: str,
    pretrained: str | None,
    cache_dir: str | Path | None,
) -> tuple[str, str | None]:
    """(architecture or hub id, local weights file or None) for an open_clip reward's path (CLIPScore, aesthetic)."""
    if is_hub_id(path):
        return str(path), None  # open_clip reads the config and weights of the hub repository
    if path is None and pretrained and Path(pretrained).expanduser().exists():
        path = pretrained  # pretrained= a local file works like path=
    if path is not None:
        folder = Path(path).expanduser()
        for filename in OPEN_CLIP_WEIGHT_NAMES if folder.is_dir() else ():
            if (folder / filename).is_file():
                return model_name, str(folder / filename)
        spec = WeightsFile(reward, f"{model_name} open_clip checkpoint", source="open_clip_model.safetensors or "
                           "open_clip_pytorch_model.bin of an open_clip hub repository")  # fmt: skip
        return model_name, local_file(path, spec)
    if not pretrained:
        raise FileNotFoundError(f"{reward}: no weights given; pass path= a local {model_name} open_clip checkpoint")
    return model_name, pretrained_file(model_name, pretrained, reward, cache_dir)


def quick_gelu_of(model_name: str, pretrained: str | None) -> bool:
    """Whether an open_clip tag uses QuickGELU (OpenAI CLIP, the aesthetic predictor's backbone) for a local file."""
    if not pretrained:
        return False
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], reward: str) -> None:
    """Load a full state dict (e.g. HPSv2's): missing weights raise, extra entries only warn."""
    result = model.load_state_dict(_strip_module_prefix(state), strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:8]) + (" ..." if len(result.missing_keys) > 8 else "")
        raise ValueError(
            f"{reward}: the checkpoint does not fit the architecture: {len(result.missing_keys)} missing weights "
            f"({shown}); check model_name="
        )
    if result.unexpected_keys:
        warnings.warn(
            f"{reward}: ignored {len(result.unexpected_keys)} checkpoint entries the model does not use "
            f"({', '.join(result.unexpected_keys[:4])} ...)",
            stacklevel=3,
        )


def transform_of(model: torch.nn.Module) -> ImagePreprocess:
    """The model's eval transform (open_clip preprocess config) as a differentiable `ImagePreprocess` (ReNO)."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    if not isinstance(size, int):
        size = int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise ValueError(f"open_clip resize_mode {resize_mode!r} is not supported (shortest, squash)")
    return ImagePreprocess(
        size=size,
        mean=tuple(cfg.get("mean", ImagePreprocess.mean)),
        std=tuple(cfg.get("std", ImagePreprocess.std)),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=resize_mode,
    )


def build_open_clip(
    model_name: str,
    *,
    weights: str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    quick_gelu: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    reward: str = "open_clip",
) -> OpenClipModel:
    """Build `model_name` (an open_clip architecture, or "hf-hub:owner/name" to download) with `weights` (a local
    checkpoint file) or `state_dict`; frozen, eval, on `device` in `dtype` (CLIPScore / HPSv2 / aesthetic, ReNO)."""
    import open_clip

    if is_hub_id(model_name):
        model = open_clip.create_model(model_name)  # the user named a hub id: open_clip downloads config + weights
    else:
        if open_clip.get_model_config(model_name) is None:
            names = ", ".join(open_clip.list_models()[:12])
            raise ValueError(f"{reward}: unknown open_clip architecture {model_name!r} (e.g. {names}, ...)")
        with _quiet_open_clip():
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        if weights is not None:
            load_state(model, open_clip.factory.load_state_dict(weights, weights_only=True), reward)
        if state_dict is not None:
            load_state(model, state_dict, reward)
    model = model.to(device=device or "cpu", dtype=dtype).eval().requires_grad_(False)
    return OpenClipModel(model, open_clip.get_tokenizer(model_name), transform_of(model))

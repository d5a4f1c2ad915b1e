"""Save and load cached head patterns (SparseD) as safetensors, tied to the model class and config they came from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .enable import HANDLE_ATTR, SparseAttentionHandle, denoiser_of

_IGNORED_CONFIG_KEYS = ("_name_or_path", "_diffusers_version", "_use_default_values", "_class_name")


def config_hash(model: torch.nn.Module) -> str:
    """A short hash of the model's architecture config (paths and library versions left out)."""
    config = {k: v for k, v in dict(getattr(model, "config", {})).items() if k not in _IGNORED_CONFIG_KEYS}
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _handle(pipe_or_model: object) -> SparseAttentionHandle:
    model, _ = denoiser_of(pipe_or_model)
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is None:
        raise RuntimeError("sparse attention is not enabled on this model; call unbottle.enable_sparse_attention")
    return handle


def save_head_patterns(pipe_or_model: object, path: str | Path) -> Path:
    """Write the cached per-layer, per-head block patterns (SparseD) to a safetensors file."""
    handle = _handle(pipe_or_model)
    tensors = {}
    for key, (indices, counts) in handle.store.patterns.items():
        prefix = "|".join(str(part) for part in key)  # layer|tokens|block|frames|height|width|text|text_first
        tensors[f"{prefix}|indices"] = indices.detach().cpu().contiguous()
        tensors[f"{prefix}|counts"] = counts.detach().cpu().contiguous()
    if not tensors:
        raise RuntimeError("no head patterns are cached yet: run the pipeline once with sparse attention enabled")
    cfg = handle.config
    metadata = {
        "model_class": type(handle.model).__name__, "config_hash": config_hash(handle.model),
        "pattern": cfg.pattern, "density": repr(cfg.density), "block_size": str(cfg.block_size), "format": "2",
    }  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_head_patterns(pipe_or_model: object, path: str | Path) -> int:
    """Load patterns saved by `save_head_patterns` into an enabled model; returns how many (layer, size) entries."""
    from safetensors import safe_open

    handle = _handle(pipe_or_model)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    expected = {
        "model_class": type(handle.model).__name__, "config_hash": config_hash(handle.model),
        "pattern": handle.config.pattern, "density": repr(handle.config.density),
        "block_size": str(handle.config.block_size),
    }  # fmt: skip
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ValueError(
                f"head patterns in {str(path)!r} were made for {key}={meta.get(key)!r}, but this model/config has "
                f"{key}={value!r}"
            )
    tensors = load_file(str(path))
    layers = {name for name in handle.layer_hooks}
    loaded = 0
    for name, indices in tensors.items():
        prefix, kind = name.rsplit("|", 1)
        if kind != "indices":
            continue
        layer, *numbers, text_first = prefix.split("|")
        if layer not in layers:
            raise ValueError(f"head patterns in {str(path)!r} name layer {layer!r}, which this model does not have")
        key = (layer, *(int(x) for x in numbers), text_first == "True")
        handle.store.patterns[key] = (indices, tensors[f"{prefix}|counts"])
        handle.store.block_masks.pop(key, None)
        loaded += 1
    return loaded

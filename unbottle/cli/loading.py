"""Resolve `--model` (hub id, local folder, or nothing = the embedded default) into a loaded pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..defaults import load_default
from ..errors import RunError, UsageError


def _not_cached(model: str, reason: str) -> RunError:
    return RunError(
        f"model {model!r} is not in the local Hugging Face cache and cannot be downloaded here ({reason}); "
        f"fetch it on a machine with network access with `hf download {model}` and copy the cache, "
        "or pass a local folder with --model PATH"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _load_folder(folder: Path, kind: str, dtype: torch.dtype, trust_remote_code: bool) -> object:
    from diffusers import DiffusionPipeline

    if not (folder / "model_index.json").exists():
        if kind == "text" and (folder / "config.json").exists():  # a transformers masked LM: DiffusionLMPipeline
            return _load_masked_lm(str(folder), dtype, trust_remote_code, local_files_only=True)
        raise UsageError(f"--model: {str(folder)!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        return DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RunError(f"--model: cannot load a pipeline from {str(folder)!r}: {_first_line(e)}") from e


def _load_masked_lm(model: str, dtype: torch.dtype, trust_remote_code: bool, local_files_only: bool) -> object:
    """A transformers masked diffusion LM (LLaDA, Dream, ...) in unbottle.DiffusionLMPipeline."""
    from ..pipelines.diffusion_lm import DiffusionLMPipeline

    config = Path(model) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type", "?") if config.exists() else "?"
    try:
        return DiffusionLMPipeline.from_pretrained(
            model, trust_remote_code=trust_remote_code, dtype=dtype, local_files_only=local_files_only
        )
    except ValueError as e:  # no mask token, not a masked LM, remote code refused
        raise UsageError(
            f"--model: {model!r} (a transformers model, model_type={model_type!r}) cannot run as a masked "
            f"diffusion LM: {_first_line(e)}"
        ) from e
    except (OSError, TypeError, KeyError) as e:
        raise RunError(f"--model: cannot load {model!r}: {_first_line(e)}") from e


def _cached_transformers_model(model: str) -> bool:
    """True when the hub cache holds `model` as a transformers model (config.json, no model_index.json)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str) and not isinstance(
            try_to_load_from_cache(model, "model_index.json"), str
        )
    except ValueError:  # not a valid repo id: the diffusers path below says so
        return False


def _load_hub(model: str, dtype: torch.dtype, trust_remote_code: bool, kind: str = "image") -> object:
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import HFValidationError

    if kind == "text" and _cached_transformers_model(model):
        return _load_masked_lm(model, dtype, trust_remote_code, local_files_only=True)
    kwargs = {"torch_dtype": dtype, "trust_remote_code": trust_remote_code}
    try:
        return DiffusionPipeline.from_pretrained(model, local_files_only=True, **kwargs)
    except (HFValidationError, ValueError) as e:
        if "repo id" in str(e) or isinstance(e, HFValidationError):
            raise UsageError(f"--model: {model!r} is neither a local folder nor a valid hub id") from e
        raise RunError(f"--model: cannot load {model!r}: {_first_line(e)}") from e
    except OSError:
        pass  # not (fully) cached: download, since the user named a hub id
    if _offline():
        raise _not_cached(model, "HF_HUB_OFFLINE is set")
    try:
        return DiffusionPipeline.from_pretrained(model, **kwargs)
    except OSError as e:
        if kind == "text":  # no model_index.json on the hub: a transformers masked LM, downloaded by transformers
            try:
                return _load_masked_lm(model, dtype, trust_remote_code, local_files_only=False)
            except RunError:
                pass
        raise _not_cached(model, _first_line(e)) from e


def load_pipeline(
    model: str | None,
    kind: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> object:
    """The pipeline for `--model`: the embedded default when None, else a local folder or a (cached) hub id."""
    if model is None:
        return load_default(kind, device=device, dtype=dtype)
    folder = Path(model).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"--model: {model!r} is a file; give a pipeline folder or a hub id")
        pipe = _load_folder(folder, kind, dtype, trust_remote_code)
    elif _looks_like_path(model):
        raise UsageError(f"--model: no such folder {model!r}")
    else:
        pipe = _load_hub(model, dtype, trust_remote_code, kind)
    return pipe.to(device)

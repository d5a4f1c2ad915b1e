"""Where reward weights come from, offline first: a local file, the local Hugging Face cache, or a hub id named by the
user.

`path=None` never downloads: it looks in the local hub cache for the reward's default file and, if it is not there,
raises `FileNotFoundError` saying which file is expected, where it is published, and the `path="hf-hub:..."` that
downloads it. A `path` starting with "hf-hub:" names a hub repository (optionally with a file after the repository:
"hf-hub:xswu/HPSv2/HPS_v2.1_compressed.pt") and downloads on first use, as the user asked. Anything else is a local
path and must exist. Optional packages (image-reward) are imported through `require`, which turns a missing package
into a `MissingDependencyError` with the pip command.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

HUB_PREFIX = "hf-hub:"


class MissingDependencyError(ImportError):
    """An optional package a reward needs (ImageReward: image-reward) is missing; the message gives the pip line."""


def require(module: str, package: str, what: str) -> ModuleType:
    """Import `module` or raise `MissingDependencyError` naming `pip install package` (ImageReward: image-reward)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{what} needs the optional package {package!r} (module {module!r}), which is not installed: "
            f"pip install {package}"
        ) from error


@dataclass(frozen=True)
class WeightsFile:
    """A reward's default weights file (e.g. HPSv2's HPS_v2.1_compressed.pt): name, hub repository, origin."""

    reward: str  # registry name, for messages
    filename: str  # e.g. "HPS_v2.1_compressed.pt"
    repo: str | None = None  # hub repository holding it, e.g. "xswu/HPSv2" (None: not on the hub)
    source: str = ""  # human-readable origin, e.g. "huggingface.co/xswu/HPSv2"

    def __post_init__(self) -> None:
        if not self.filename:
            raise ValueError("filename must be a file name, got ''")

    @property
    def origin(self) -> str:
        return self.source or (f"huggingface.co/{self.repo}" if self.repo else "its authors")

    def hint(self) -> str:
        """How to provide the file: a local path, or the hf-hub: id that downloads it (HPSv2 / ReNO checkpoints)."""
        hint = f"pass path= a local {self.filename} (from {self.origin})"
        if self.repo:
            hint += f", or path={HUB_PREFIX + self.repo!r} to download it"
        return hint


def is_hub_id(path: str | Path | None) -> bool:
    """True for "hf-hub:owner/name[/file]", a hub id the user named (downloads allowed; e.g. HPSv2's xswu/HPSv2)."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def split_hub_id(path: str) -> tuple[str, str | None]:
    """Split a hub id: "hf-hub:owner/name[/file]" → ("owner/name", "file" or None), e.g. HPSv2's xswu/HPSv2."""
    parts = path[len(HUB_PREFIX) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"a hub id looks like 'hf-hub:owner/name[/file]', got {path!r}")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def cached_file(repo: str, filenames: tuple[str, ...] | str, cache_dir: str | Path | None = None) -> str | None:
    """The first of `filenames` already in the local hub cache for `repo` (e.g. HPSv2), else None; no network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in (filenames,) if isinstance(filenames, str) else filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def hub_download(repo: str, filename: str, cache_dir: str | Path | None = None) -> str:
    """Download (or reuse) `filename` of hub repository `repo` (HPSv2, ImageReward): only for hub ids users name."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, cache_dir=cache_dir)


def local_file(path: str | Path, spec: WeightsFile) -> str:
    """`path` as an existing file (or a folder holding spec.filename), else FileNotFoundError naming both (HPSv2)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / spec.filename).is_file():
        return str(p / spec.filename)
    if not p.is_file():
        raise FileNotFoundError(
            f"{spec.reward}: no such file {str(path)!r}; expected {spec.filename} (from {spec.origin})"
        )
    return str(p)


def resolve_file(path: str | Path | None, spec: WeightsFile, cache_dir: str | Path | None = None) -> str:
    """The local weights file for `path` (None: cached default, never downloaded; "hf-hub:...": downloaded; HPSv2)."""
    if path is None:
        found = cached_file(spec.repo, spec.filename, cache_dir) if spec.repo else None
        if found is None:
            raise FileNotFoundError(f"{spec.reward}: {spec.filename} is not available locally; {spec.hint()}")
        return found
    if is_hub_id(path):
        repo, filename = split_hub_id(str(path))
        return hub_download(repo, filename or spec.filename, cache_dir)
    return local_file(path, spec)


def read_state_dict(file: str, reward: str) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict: .safetensors, or `torch.load(weights_only=True)` and its "state_dict" entry if any
    (HPSv2's checkpoint layout)."""
    if str(file).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(file))
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{reward}: {file} does not hold a state dict (name → tensor)")
    return checkpoint

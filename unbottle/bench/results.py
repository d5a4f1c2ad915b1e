"""What every benchmark's results share: the JSON header (what ran, where, with which versions, when), the number
format of the markdown tables, the file-name tag of a device, and the JSON + markdown files."""

from __future__ import annotations

import datetime
import importlib
import json
import math
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table, or — when missing."""
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def gpu_tag(name: str) -> str:
    """A file-name tag from a device name: 'NVIDIA H200' → 'h200', 'NVIDIA H100 80GB HBM3' → 'h100-80gb-hbm3'."""
    tag = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", tag).strip("-") or "gpu"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the device type and processor off CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or 'cpu'})"


def git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit, "+dirty" when tracked files differ from it (the code that ran is not that commit), or
    None where there is no git repository (e.g. a copied working tree)."""
    try:
        root = root if root is not None else Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True, timeout=30)
        return out.stdout.strip() + ("+dirty" if diff.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str:
    """unbottle's version (`unbottle.version`)."""
    from ..version import __version__

    return __version__


def library_version(module: str) -> str | None:
    """`module.__version__`, or None where it is not importable."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def utc_now() -> str:
    """The time in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def close_run(results: dict, started: float, write: Callable[[dict], dict], log: Callable[[str], None],
              prefix: str = "") -> dict:  # fmt: skip
    """Stamp a finished run (wall seconds since `started` on the perf counter, UTC end), write it, say where."""
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["finished"] = utc_now()
    paths = write(results)
    log(f"{prefix}wrote " + ", ".join(str(p) for p in paths.values()))
    return results


def environment(
    benchmark: str, command: str, device: torch.device, libraries: Sequence[str] = (), *, capability: bool = False,
    cudnn: bool = False,
) -> dict:  # fmt: skip
    """The JSON header: the benchmark, the command, the device, torch's and `libraries`' versions (and the GPU's
    compute capability, cuDNN's version where asked), python, unbottle, the git commit and the start time."""
    cuda = device.type == "cuda"
    name = device_name(device)
    header: dict = {"benchmark": benchmark, "command": command, "argv": sys.argv, "gpu": name,
                    "gpu_tag": gpu_tag(name)}  # fmt: skip
    if capability:
        header["capability"] = list(torch.cuda.get_device_capability(device)) if cuda else None
    header["torch"] = torch.__version__
    header.update({module: library_version(module) for module in libraries})
    header["cuda"] = torch.version.cuda
    if cudnn:
        header["cudnn"] = torch.backends.cudnn.version() if cuda else None
    header.update(python=platform.python_version(), unbottle=package_version(), git_commit=git_commit(),
                  started=utc_now())  # fmt: skip
    return header


def jsonable(value: object) -> object:
    """Non-finite floats as strings (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json_and_markdown(results: dict, out_dir: str | Path, stem: str, markdown: str, *, indent: int = 2,
                            strict: bool = True) -> dict[str, Path]:  # fmt: skip
    """`stem`.json and `stem`.md in `out_dir`; returns {"json": path, "md": path}. `strict`: non-finite floats as
    strings (valid JSON); otherwise as JavaScript's Infinity / NaN, and objects JSON lacks as their str()."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    text = json.dumps(jsonable(results), indent=indent) if strict else json.dumps(results, indent=indent, default=str)
    paths["json"].write_text(text + "\n")
    paths["md"].write_text(markdown)
    return paths

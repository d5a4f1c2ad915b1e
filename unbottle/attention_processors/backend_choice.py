"""Which kernel runs a block-sparse attention call: measured once per call shape, remembered on disk.

No single block-sparse kernel wins on Hopper: cuDNN frontend's kernel leads at long lengths and ~10% density, ours
or FlexAttention elsewhere, and a backend may refuse a head size or a block size. With a `hopper` extra package
installed (cuDNN frontend BSA, FlashAttention-4), the first call of each key (GPU, dtype, batch, heads, lengths, head
sizes, block size, density band, whether some row is empty) runs every backend that takes it on the call's own
inputs, drops any whose output or LSE disagrees with the reference route (compiled FlexAttention), times the rest
(CUDA events, median of 10 after 3 warm calls) and keeps them fastest first. The order is written to
`<cache dir>/sparse-backends.json` (`UNBOTTLE_CACHE_DIR`, else `$XDG_CACHE_HOME/unbottle`, else
`~/.cache/unbottle`), keyed also by the versions of torch and the backend packages, and is read back by later
processes; the file is validated before use and rewritten if it is not ours. A backend that raises on a later call
warns once and the next in the order runs. `UNBOTTLE_SPARSE_BACKEND` = auto (default) or a backend name forces one.
Without any `hopper` package nothing is measured: the fixed rule of block_sparse.py runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import BlockMask

from ..version import __version__
from .kernels import cudnn_bsa, flash4

ENV_BACKEND = "UNBOTTLE_SPARSE_BACKEND"
ENV_CACHE = "UNBOTTLE_CACHE_DIR"
CACHE_FILE = "sparse-backends.json"
CACHE_FORMAT = 1
REFERENCE = "flex"  # the route whose output every other backend must match before it is timed
DENSITY_BANDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # a key holds the smallest band edge ≥ the density
TOLERANCE = 2e-2  # bf16/fp16: relative Frobenius error of the output; max |ΔLSE| on rows with keys
WARM_CALLS, TIMED_CALLS = 3, 10
PACKAGES = ("torch", "nvidia-cudnn-frontend", "flash-attn-4", "nvidia-cutlass-dsl")


@dataclass(frozen=True)
class Backend:
    """A block-sparse attention kernel: `run(q, k, v, block_mask, scale)` → (out (B, H, Nq, Dv), LSE (B, H, Nq) fp32,
    natural log, empty rows 0 and -inf); `refusal` says why it cannot take a call (None: it can)."""

    name: str
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    refusal: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, BlockMask], str | None]
    available: Callable[[], bool]
    hopper: bool = False  # from a `hopper` extra package: its presence turns the measurement on


def _hopper_backends() -> list[Backend]:
    return [
        Backend("cudnn_bsa", cudnn_bsa.block_sparse_attention_cudnn, cudnn_bsa.refusal, cudnn_bsa.available, True),
        Backend("fa4", flash4.block_sparse_attention_flash4, flash4.refusal, flash4.available, True),
    ]  # fmt: skip


def default_cache_dir() -> Path:
    """`UNBOTTLE_CACHE_DIR`, else `$XDG_CACHE_HOME/unbottle`, else `~/.cache/unbottle`."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "unbottle"


def package_versions() -> dict[str, str]:
    """The versions a measurement depends on (absent packages as "-")."""
    versions = {"unbottle": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def density_band(density: float) -> float:
    """The smallest band edge of DENSITY_BANDS at or above `density`."""
    return next((edge for edge in DENSITY_BANDS if density <= edge + 1e-9), 1.0)


def mask_summary(block_mask: BlockMask) -> tuple[float, bool]:
    """(kept fraction of the (query block, key block) tiles, whether some query block keeps none): one host sync."""
    counts = block_mask.kv_num_blocks.long()  # (B|1, H|1, nQ)
    if block_mask.full_kv_num_blocks is not None:
        counts = counts + block_mask.full_kv_num_blocks.long()
    n_kv = max(1, math.ceil(block_mask.seq_lengths[1] / block_mask.BLOCK_SIZE[1]))
    stats = torch.stack([counts.float().mean() / n_kv, (counts == 0).any().float()]).tolist()
    return float(stats[0]), bool(stats[1])


def _device_name(device: torch.device) -> str:
    return device.type if device.type != "cuda" else _cuda_name(device.index or 0)


@functools.cache
def _cuda_name(index: int) -> str:
    """A GPU's name and compute capability, asked once (the key is made on every call)."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm{major}{minor}"


def cuda_median_ms(fn: Callable[[], object]) -> float:
    """Median ms of `fn` over TIMED_CALLS calls after WARM_CALLS, by CUDA events (CPU: wall clock)."""
    import time

    for _ in range(WARM_CALLS):
        fn()
    times = []
    for _ in range(TIMED_CALLS):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def agrees(out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor, ref_lse: torch.Tensor,
           tol: float = TOLERANCE) -> str | None:  # fmt: skip
    """None when (out, lse) match the reference's within `tol`, else what differs."""
    if out.shape != ref_out.shape or lse.shape != ref_lse.shape:
        return f"shapes {tuple(out.shape)}/{tuple(lse.shape)} against {tuple(ref_out.shape)}/{tuple(ref_lse.shape)}"
    out, ref_out, lse, ref_lse = out.float(), ref_out.float(), lse.float(), ref_lse.float()
    if not torch.isfinite(out).all():
        return "non-finite output"
    rel = float((out - ref_out).norm() / ref_out.norm().clamp_min(1e-30))
    if rel > tol:
        return f"output relative error {rel:.3g} > {tol}"
    empty_ref, empty = torch.isneginf(ref_lse), torch.isneginf(lse)
    if not torch.equal(empty_ref, empty):
        return "LSE -inf (rows with no key) differs"
    rows = ~empty_ref
    if rows.any():
        err = float((lse[rows] - ref_lse[rows]).abs().max())
        if not err <= tol * max(1.0, float(ref_lse[rows].abs().max())):
            return f"LSE max error {err:.3g}"
    return None


class BackendChooser:
    """Per-key backend order by measurement, kept in memory and in a JSON file (see the module docstring)."""

    def __init__(self, backends: list[Backend], cache_path: Path | None = None,
                 timer: Callable[[Callable[[], object]], float] = cuda_median_ms,
                 device_name: Callable[[torch.device], str] = _device_name) -> None:  # fmt: skip
        self.backends = {b.name: b for b in backends}
        self.cache_path = cache_path
        self.timer, self.device_name = timer, device_name
        self.entries: dict[str, dict] | None = None  # loaded lazily
        self.measurements = 0  # keys measured in this process (tests count them)
        self.warned: set[tuple[str, str]] = set()
        self._masks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockMask -> mask_summary

    # ---- the file ---------------------------------------------------------------------------------------------

    def _warn(self, what: str, key: str, message: str) -> None:
        if (what, key) not in self.warned:
            self.warned.add((what, key))
            warnings.warn(message, stacklevel=4)

    def _load(self) -> dict[str, dict]:
        if self.entries is not None:
            return self.entries
        self.entries = {}
        path = self.cache_path
        if path is None or not path.exists():
            return self.entries
        try:
            data = json.loads(path.read_text())
            entries = self._validated(data)
        except (OSError, ValueError) as e:
            self._warn("file", str(path), f"ignoring the sparse-attention backend cache {path}: {e}; the backends "
                                          "are measured again and the file rewritten")  # fmt: skip
            return self.entries
        if data.get("versions") == package_versions():
            self.entries = entries
        return self.entries

    def _validated(self, data: object) -> dict[str, dict]:
        """The entries of a cache file, or ValueError naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError(f"not a format-{CACHE_FORMAT} backend cache")
        if not isinstance(data.get("versions"), dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("'versions' and 'entries' must be objects")
        entries = {}
        for key, entry in data["entries"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("order"), list):
                raise ValueError(f"entry {key!r} has no 'order' list")
            order, ms = entry["order"], entry.get("ms", {})
            known = all(isinstance(name, str) and name in self.backends for name in order)
            if not known or len(set(order)) != len(order):
                raise ValueError(f"entry {key!r}: 'order' {order!r} names unknown or repeated backends")
            if not isinstance(ms, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                for v in ms.values()
            ):
                raise ValueError(f"entry {key!r}: 'ms' must map backends to times ≥ 0")
            entries[key] = {"order": order, "ms": dict(ms), "failed": dict(entry.get("failed", {}))}
        return entries

    def _save(self) -> None:
        path = self.cache_path
        if path is None:
            return
        data = {"format": CACHE_FORMAT, "versions": package_versions(), "entries": self.entries}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as e:
            self._warn("save", str(path), f"cannot write the sparse-attention backend cache {path} ({e}); the "
                                          "choice holds for this process only")  # fmt: skip

    # ---- choosing ---------------------------------------------------------------------------------------------

    def key(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> str:
        """The measurement key of a call (one host sync per new BlockMask, for its density and empty rows)."""
        if block_mask not in self._masks:
            self._masks[block_mask] = mask_summary(block_mask)
        density, empty = self._masks[block_mask]
        b, h, nq, d = q.shape
        return (f"{self.device_name(q.device)}|{str(q.dtype).removeprefix('torch.')}|B{b}|H{h}|{nq}x{k.shape[2]}|"
                f"D{d}/{v.shape[-1]}|bs{block_mask.BLOCK_SIZE[0]}x{block_mask.BLOCK_SIZE[1]}|d≤{density_band(density):g}|"
                f"{'empty rows' if empty else 'no empty rows'}")  # fmt: skip

    def measure(self, key: str, q, k, v, block_mask: BlockMask, scale: float | None) -> dict:
        """Run, check and time every backend that takes this call; the entry (order fastest first, ms, failed)."""
        self.measurements += 1
        ms: dict[str, float] = {}
        failed: dict[str, str] = {}
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, backend in self.backends.items():
            why = backend.refusal(q, k, v, block_mask) if backend.available() else "not installed"
            if why is not None:
                failed[name] = why
                continue
            try:
                outputs[name] = backend.run(q, k, v, block_mask, scale)  # compiles on first use
            except Exception as e:  # noqa: BLE001 — a kernel that cannot build or run here
                failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
        reference = outputs.get(REFERENCE) or next(iter(outputs.values()), None)
        for name in list(outputs):
            wrong = agrees(*outputs[name], *reference) if name != REFERENCE and reference is not None else None
            if wrong is not None:
                failed[name] = f"disagrees with {REFERENCE}: {wrong}"
                continue
            backend = self.backends[name]
            try:
                ms[name] = self.timer(lambda backend=backend: backend.run(q, k, v, block_mask, scale))
            except Exception as e:  # noqa: BLE001
                failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
        outputs.clear()
        return {"order": sorted(ms, key=ms.get), "ms": ms, "failed": failed}

    def order(self, q, k, v, block_mask: BlockMask, scale: float | None) -> tuple[str, list[str]]:
        """(key, backend names to try, fastest first), measuring the key first if it is new."""
        entries = self._load()
        key = self.key(q, k, v, block_mask)
        if key not in entries:
            entries[key] = self.measure(key, q, k, v, block_mask, scale)
            self._save()
        return key, entries[key]["order"]

    def run(self, q, k, v, block_mask: BlockMask, scale: float | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The call on the fastest backend that runs it (None: none did; the caller's fixed rule runs it)."""
        forced = os.environ.get(ENV_BACKEND, "auto").strip() or "auto"
        if forced != "auto":
            if forced not in self.backends:
                raise ValueError(f"{ENV_BACKEND}={forced!r}: must be 'auto' or one of {', '.join(self.backends)}")
            key, names = forced, [forced]
        else:
            key, names = self.order(q, k, v, block_mask, scale)
        for name in names:
            if (name, key) in self.warned:
                continue
            try:
                return self.backends[name].run(q, k, v, block_mask, scale)
            except Exception as e:  # noqa: BLE001 — refused here: once, then the next fastest
                self._warn(name, key, f"sparse attention backend {name} failed on {key} ({type(e).__name__}: "
                                      f"{str(e)[:200]}); the next fastest runs these calls from now on")  # fmt: skip
        return None


_EXTRA: list[Backend] = []  # the fixed rule's own routes (block_sparse.py registers triton and flex)
_chooser: BackendChooser | None = None


def register_backend(backend: Backend) -> None:
    """Add a backend to the measurement (block_sparse.py adds our Triton kernel and FlexAttention)."""
    global _chooser
    _EXTRA[:] = [b for b in _EXTRA if b.name != backend.name] + [backend]
    _chooser = None


def chooser() -> BackendChooser:
    """The process's chooser: our routes and the `hopper` backends, the cache in `default_cache_dir()`."""
    global _chooser
    if _chooser is None:
        _chooser = BackendChooser([*_EXTRA, *_hopper_backends()], default_cache_dir() / CACHE_FILE)
    return _chooser


@functools.cache
def hopper_installed() -> bool:
    """Whether any `hopper` extra package imports here (only then is anything measured; asked once, as every CUDA
    block-sparse call asks)."""
    return any(b.available() for b in _hopper_backends())


def run_measured(q, k, v, block_mask: BlockMask, scale: float | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The call on the measured-fastest backend (CUDA, fp16/bf16, a `hopper` package installed, or
    UNBOTTLE_SPARSE_BACKEND set), else None (block_sparse.py's fixed rule runs it)."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    if os.environ.get(ENV_BACKEND, "auto").strip() in ("", "auto") and not hopper_installed():
        return None
    return chooser().run(q, k, v, block_mask, scale)

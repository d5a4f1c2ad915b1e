"""Save and load cached head patterns (SparseD) as safetensors, tied to the model class and config they came from.

A file holds, per cached pattern, `layer|tokens|block_size|frames|height|width|text_len|text_first|indices` (int32
(B, H, nQ, K)) and `...|counts` (int32 (B, H, nQ)), see block_mask.py. Its metadata names the model class, a hash of
its config, the pattern, `coverage` (the calibrated softmax mass, `none` without one; a file without the key counts
as `none`), `density` (files without a coverage), the block size, `realized_density` (per layer the mean over its
patterns of kept tiles / (nQ·nK), averaged over the layers; recounted from the tensors on load, and
only files without a coverage may lack it), and (format "3") `checksum`: the sha256 hex digest of the JSON list
of sorted `[key, value]` metadata pairs except the checksum, a newline, then per tensor in sorted name order the JSON
`[name, dtype, shape]` (dtype as in `torch.int32` without `torch.`), a newline and its raw little-endian bytes.
A pipeline with several denoisers (Wan 2.2's two experts) writes one file for all: tensor names start with the
component (`transformer_2:layer|...`), `denoisers` lists the components, and `model_class` / `config_hash` hold one
comma-separated entry per denoiser, in that order.

A file is untrusted input: `load_head_patterns` checks its metadata, checksum and every tensor (names, dtypes, shapes,
counts, block indices) against the enabled model before anything reaches its pattern store, so a file loads whole
or not at all. Format "2" files (no checksum) still load, fully validated.

Under context parallelism (Ulysses) each rank holds its heads' patterns: saving gathers every head (every rank calls
it, the group's rank 0 writes), so the file is the one a single process writes; loading checks the whole file against
the layers' full head counts, then each rank keeps its own heads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .context_parallel import SequenceShards, all_heads, barrier, own_heads
from .enable import sparse_handle
from .handle import PipelineSparseAttention, SparseAttentionHandle, mean_density
from .patterns import kept_fraction

FORMAT = "3"
READABLE_FORMATS = ("2", "3")  # "2": no checksum
_IGNORED_CONFIG_KEYS = ("_name_or_path", "_diffusers_version", "_use_default_values", "_class_name")
_KEY_FIELDS = ("tokens", "block_size", "frames", "height", "width", "text_len")
_NUMBER = re.compile(r"0|[1-9][0-9]{0,17}")  # canonical decimal, below 10**18: one spelling per key
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_HEADER = 100_000_000  # bytes, safetensors' own limit
_ABSENT = {"coverage": "none"}  # what a metadata key absent from a file means
_DENSITY_TOLERANCE = 1e-9  # recorded vs recounted realized density (float sums in another order)


def config_hash(model: torch.nn.Module) -> str:
    """A short hash of the model's architecture config (paths and library versions left out)."""
    config = {k: v for k, v in dict(getattr(model, "config", {})).items() if k not in _IGNORED_CONFIG_KEYS}
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _handles(pipe_or_model: object) -> tuple[dict[str, SparseAttentionHandle], SparseAttentionHandle | None]:
    """(handles by tensor-name prefix, the single handle or None): one denoiser's patterns are named `layer|...`,
    several denoisers' `component:layer|...` (Wan 2.2's `transformer_2:blocks.0.attn1|...`)."""
    handle = sparse_handle(pipe_or_model)
    if handle is None:
        raise RuntimeError("sparse attention is not enabled on this model; call unbottle.enable_sparse_attention")
    if isinstance(handle, PipelineSparseAttention):
        return {f"{component}:": h for component, h in handle.handles.items()}, None
    return {"": handle}, handle


def _expected_metadata(handles: Mapping[str, SparseAttentionHandle]) -> dict[str, str]:
    cfg = next(iter(handles.values())).config
    models = [h.model for h in handles.values()]
    metadata = {
        "model_class": ",".join(type(m).__name__ for m in models), "config_hash": ",".join(map(config_hash, models)),
        "pattern": cfg.pattern, "coverage": "none" if cfg.coverage is None else repr(float(cfg.coverage)),
    }  # fmt: skip
    if cfg.coverage is None:  # with a coverage, the density selects nothing
        metadata["density"] = repr(cfg.density)
    metadata["block_size"] = str(cfg.block_size)
    if len(handles) > 1:
        metadata["denoisers"] = ",".join(prefix.removesuffix(":") for prefix in handles)
    return metadata


def _checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 hex digest over the metadata (all but `checksum`) and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted([k, v] for k, v in metadata.items() if k != "checksum")).encode() + b"\n")
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        digest.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode() + b"\n")
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _realized_density(patterns: list[tuple[str, tuple, torch.Tensor]]) -> float | None:
    """The realized density of (component, key, counts) patterns: per layer the mean kept-tile fraction of its
    patterns, averaged over the layers (`SparseAttentionHandle.realized_density` of a store holding just these)."""
    per_layer: dict[str, list[float]] = {}
    for component, key, counts in patterns:  # key: (layer, tokens, block size, ...): self-attention, nK = nQ
        per_layer.setdefault(component + key[0], []).append(kept_fraction(counts, math.ceil(key[1] / key[2])))
    return mean_density({layer: sum(v) / len(v) for layer, v in per_layer.items()})


def _shards(handle: SparseAttentionHandle) -> SequenceShards | None:
    """The handle's context-parallel sharding (each rank holds its heads' patterns), None without one."""
    return handle.clock.shards if handle.clock is not None else None


def _every_head(handle: SparseAttentionHandle) -> list[tuple[tuple, tuple[torch.Tensor, torch.Tensor]]]:
    """The handle's cached patterns with all heads: under context parallelism joined from every rank (a collective);
    "window" patterns are one for all heads already."""
    patterns = list(handle.store.patterns.items())  # made in the same order on every rank (checked when joined)
    shards = _shards(handle)
    return patterns if shards is None or handle.config.pattern == "window" else all_heads(patterns, shards)


def save_head_patterns(pipe_or_model: object, path: str | Path) -> Path:
    """Write the cached per-layer, per-head block patterns (SparseD) to a safetensors file, with a checksum; a pipeline
    with several denoisers (Wan 2.2's experts) writes all of theirs to the one file. Under context parallelism every
    rank calls it: the file holds every head, as one process would write it, and the group's rank 0 writes it."""
    handles, _ = _handles(pipe_or_model)
    tensors, saved = {}, []
    shards = next((s for h in handles.values() if (s := _shards(h)) is not None), None)
    for component, handle in handles.items():
        for key, (indices, counts) in _every_head(handle):
            saved.append((component, key, counts))
            prefix = component + "|".join(str(part) for part in key)  # layer|tokens|block|frames|height|width|text|..
            tensors[f"{prefix}|indices"] = indices.detach().cpu().contiguous()  # (B, H, nQ, K) int32
            tensors[f"{prefix}|counts"] = counts.detach().cpu().contiguous()  # (B, H, nQ) int32
    if not tensors:
        raise RuntimeError("no head patterns are cached yet: run the pipeline once with sparse attention enabled")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"head patterns file {str(path)!r} is a directory; give a file path (e.g. p.safetensors)")
    metadata = {**_expected_metadata(handles), "realized_density": repr(_realized_density(saved)), "format": FORMAT}
    metadata["checksum"] = _checksum(tensors, metadata)
    data = save_bytes(tensors, metadata=metadata)
    if shards is not None and shards.rank != 0:
        barrier(shards)  # until rank 0 has written the file
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)  # readers never see a half-written file
        finally:
            partial.unlink(missing_ok=True)
    finally:
        barrier(shards)  # the other ranks go on, whether or not the write succeeded
    return path


class _PatternFile:
    """One head-patterns file being read: the checks of its bytes and metadata, and errors that name it."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)

    def error(self, message: str) -> ValueError:
        return ValueError(f"head patterns file {self.name!r}: {message}")

    def not_safetensors(self, why: str) -> ValueError:
        return self.error(f"not a valid safetensors file ({why})")

    def read_header(self, f: BinaryIO) -> tuple[bytes, dict[str, str]]:
        """The file's first bytes (length and JSON header) and its metadata; the tensors are read afterwards."""
        head = f.read(8)
        if len(head) < 8:
            raise self.not_safetensors(f"{len(head)} bytes long, shorter than a safetensors header")
        size = int.from_bytes(head, "little")
        if size > _MAX_HEADER:
            raise self.not_safetensors(f"its header claims {size} bytes, more than {_MAX_HEADER}")
        raw = f.read(size)
        if len(raw) < size:
            raise self.not_safetensors(f"its header claims {size} bytes but the file ends after {len(raw)}")

        def no_duplicates(pairs: list) -> dict:
            keys = [k for k, _ in pairs]
            if len(set(keys)) != len(keys):
                raise ValueError("duplicate key")
            return dict(pairs)

        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, duplicate keys, deep nesting
            raise self.not_safetensors("its header is not valid JSON") from None
        if not isinstance(header, dict):
            raise self.not_safetensors("its header is not a JSON object")
        metadata = header.get("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self.not_safetensors("its __metadata__ is not a map of strings")
        return head + raw, metadata

    def check_metadata(self, metadata: Mapping[str, str], expected: Mapping[str, str]) -> str:
        """The file's format, once its metadata matches this model and config (checksum present for format 3)."""
        fmt = metadata.get("format")
        if fmt not in READABLE_FORMATS:
            if not metadata.keys() & {"format", *expected}:
                raise self.error("has no head-pattern metadata; it was not written by unbottle.save_head_patterns")
            raise self.error(f"format {fmt!r} is not one this version reads ({', '.join(READABLE_FORMATS)})")
        for key, value in expected.items():
            found = metadata.get(key, _ABSENT.get(key))
            if found != value:
                raise self.error(
                    f"made for {key}={found!r}, but this model/config has {key}={value!r}; make the "
                    "patterns again with this model and config"
                )
        checksum = metadata.get("checksum")
        if fmt == "2" and checksum is not None:
            raise self.error("format '2' files carry no checksum, but this one has one: the file was altered")
        if fmt == "3" and (checksum is None or not _SHA256.fullmatch(checksum)):
            raise self.error(f"format '3' needs a sha256 checksum (64 hex digits), found {checksum!r}")
        return fmt

    def realized_density(self, metadata: Mapping[str, str]) -> float | None:
        """The file's recorded realized density, checked to be a finite number in (0, 1]; None where it records none
        (files without a coverage may lack it)."""
        text = metadata.get("realized_density")
        if text is None:
            if metadata.get("coverage", "none") != "none":
                raise self.error("records a coverage but no realized_density; make the patterns again")
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise self.error(f"has realized_density {text!r}, allowed a finite number in (0, 1]")
        return value

    def tensors(self, data: bytes) -> dict[str, torch.Tensor]:
        try:
            return load_bytes(data)
        except Exception:  # noqa: BLE001 — the library's own errors name its internals, not the file
            raise self.not_safetensors("its tensor entries do not match its data") from None


def _parse_key(file: _PatternFile, name: str, prefix: str, layers: Mapping[str, object], block_size: int) -> tuple:
    """(layer, tokens, block size, frames, height, width, text_len, text_first) from a tensor name, checked."""
    parts = prefix.split("|")
    if len(parts) != 8:
        raise file.error(
            f"tensor {name!r} is not named 'layer|tokens|block_size|frames|height|width|text_len|text_first|indices' "
            "(or '...|counts')"
        )
    layer, *numbers, text_first = parts
    if layer not in layers:
        known = ", ".join(sorted(layers)[:4]) + (", ..." if len(layers) > 4 else "")
        raise file.error(f"tensor {name!r} names layer {layer!r}, which is no sparse layer of this model ({known})")
    for field, text in zip(_KEY_FIELDS, numbers, strict=True):
        if not _NUMBER.fullmatch(text):
            raise file.error(f"tensor {name!r} has {field} {text!r}, allowed a decimal integer 0..10**18-1")
    tokens, bs, frames, height, width, text_len = (int(x) for x in numbers)
    if text_first not in ("True", "False"):
        raise file.error(f"tensor {name!r} has text_first {text_first!r}, allowed 'True' or 'False'")
    if bs != block_size:
        raise file.error(f"tensor {name!r} has block_size {bs}, but this config has block_size={block_size}")
    if tokens < 1 or frames * height * width + text_len != tokens:
        raise file.error(
            f"tensor {name!r} has tokens {tokens}, allowed frames·height·width + text_len = "
            f"{frames}·{height}·{width} + {text_len} = {frames * height * width + text_len} (at least 1)"
        )
    return layer, tokens, bs, frames, height, width, text_len, text_first == "True"


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _check_pattern(
    file: _PatternFile, prefix: str, key: tuple, indices: torch.Tensor, counts: torch.Tensor, heads: int | None
) -> None:
    """Raise if the (indices, counts) pair is not a pattern this model's layer can run (see block_mask.py)."""
    i_name, c_name = f"{prefix}|indices", f"{prefix}|counts"
    for name, t, dims in ((i_name, indices, "(B, H, nQ, K)"), (c_name, counts, "(B, H, nQ)")):
        if t.dtype != torch.int32:
            raise file.error(f"tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, allowed int32")
        if t.dim() != len(dims.split(",")):
            raise file.error(f"tensor {name!r} has shape {tuple(t.shape)}, allowed {dims}")
    tokens, block_size = key[1], key[2]
    n_blocks = math.ceil(tokens / block_size)  # query and key blocks: self-attention
    b, h, n_q, width = indices.shape
    allowed_h = "H" if heads is None else "1" if heads == 1 else f"1 or {heads}"
    if b != 1 or (h != 1 and heads is not None and h != heads) or n_q != n_blocks or not 1 <= width <= n_blocks:
        raise file.error(
            f"tensor {i_name!r} has shape {tuple(indices.shape)}, allowed (1, {allowed_h}, {n_blocks}, 1..{n_blocks}) "
            f"for {tokens} tokens in blocks of {block_size} and the layer's {heads or 'unknown'} heads"
        )
    if tuple(counts.shape) != (b, h, n_q):
        raise file.error(f"tensor {c_name!r} has shape {tuple(counts.shape)}, allowed {(b, h, n_q)} as its indices")
    bad = (counts < 1) | (counts > width)  # (1, H, nQ)
    if bad.any():
        at = _first(bad)
        raise file.error(f"tensor {c_name!r} holds count {int(counts[at])} at {at}, allowed 1..{width}")
    slots = torch.arange(width)
    kept = slots < counts[..., None]  # (1, H, nQ, K): each row's first `counts` entries
    idx = indices.long()
    bad = kept & ((idx < 0) | (idx >= n_blocks))
    if bad.any():
        at = _first(bad)
        raise file.error(f"tensor {i_name!r} holds block index {int(idx[at])} at {at}, allowed 0..{n_blocks - 1}")
    ordered = torch.where(kept, idx, n_blocks + slots).sort(-1).values  # padding: distinct values past every block
    repeated = ordered[..., 1:] == ordered[..., :-1]  # (1, H, nQ, K-1)
    if repeated.any():
        at = _first(repeated)
        raise file.error(
            f"tensor {i_name!r} keeps block {int(ordered[at])} twice in row {at[:3]}, allowed each block at most once"
        )


def load_head_patterns(pipe_or_model: object, path: str | Path) -> int:
    """Load patterns saved by `save_head_patterns` into an enabled model; returns how many (layer, size) entries.

    The file is checked whole (metadata, checksum, every tensor) before the model's pattern store changes; a file that
    fails raises ValueError naming it (FileNotFoundError when it does not exist) and leaves the store as it was.
    """
    handles, single = _handles(pipe_or_model)
    path = Path(path)
    file = _PatternFile(path)
    try:
        with open(path, "rb") as f:
            head, metadata = file.read_header(f)
            fmt = file.check_metadata(metadata, _expected_metadata(handles))
            recorded = file.realized_density(metadata)
            data = head + f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"head patterns file {file.name!r} does not exist") from None
    except IsADirectoryError:
        raise file.error("is a directory, not a safetensors file") from None
    except OSError as e:
        raise file.error(f"cannot be read ({e.strerror or type(e).__name__})") from None
    tensors = file.tensors(data)
    if fmt == "3" and _checksum(tensors, metadata) != metadata["checksum"]:
        raise file.error("its checksum does not match its contents: the file was altered or damaged")
    if not tensors:
        raise file.error("holds no patterns")
    prefixes: dict[str, dict[str, torch.Tensor]] = {}
    for name in sorted(tensors):
        prefix, _, kind = name.rpartition("|")
        if kind not in ("indices", "counts") or not prefix:
            raise file.error(f"holds tensor {name!r}, allowed only '...|indices' and '...|counts' pattern tensors")
        prefixes.setdefault(prefix, {})[kind] = tensors[name]
    loaded: list[tuple[SparseAttentionHandle, tuple, tuple[torch.Tensor, torch.Tensor]]] = []
    modules = {component: dict(h.model.named_modules()) for component, h in handles.items()}
    modules_by_handle = {id(handles[component]): named for component, named in modules.items()}
    for prefix, pair in prefixes.items():
        for kind, other in (("indices", "counts"), ("counts", "indices")):
            if kind not in pair:
                raise file.error(f"holds tensor {f'{prefix}|{other}'!r} without its {f'{prefix}|{kind}'!r}")
        component, _, local = prefix.partition(":") if single is None else ("", "", prefix)
        component = f"{component}:" if single is None else ""
        if component not in handles or not local:
            allowed = ", ".join(repr(c) for c in handles)
            raise file.error(f"tensor {f'{prefix}|indices'!r} names no denoiser of this pipeline (prefixes {allowed})")
        handle = handles[component]
        key = _parse_key(file, f"{prefix}|indices", local, handle.layer_hooks, handle.config.block_size)
        heads = getattr(modules[component].get(key[0]), "heads", None)
        heads = heads if isinstance(heads, int) and not isinstance(heads, bool) and heads >= 1 else None
        _check_pattern(file, prefix, key, pair["indices"], pair["counts"], heads)
        loaded.append((handle, key, (pair["indices"], pair["counts"])))
    recounted = _realized_density([(str(id(h)), key, pattern[1]) for h, key, pattern in loaded])  # layers by denoiser
    if recorded is not None and abs(recorded - recounted) > _DENSITY_TOLERANCE:
        raise file.error(
            f"records realized_density {recorded!r}, but its patterns keep {recounted!r} of their tiles; the file "
            "was altered"
        )
    for handle, key, pattern in loaded:  # every entry checked: only now does any store change
        heads = getattr(modules_by_handle[id(handle)].get(key[0]), "heads", None)
        pattern = tuple(own_heads(t, _shards(handle), heads or t.shape[1]) for t in pattern)  # this rank's heads
        handle.store.patterns[key] = pattern
        handle.store.densities[key] = kept_fraction(pattern[1], math.ceil(key[1] / key[2]))
        handle.store.block_masks.pop(key, None)
    return len(loaded)

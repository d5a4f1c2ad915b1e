"""Fingerprints of every feature's outputs on the offline tiny fixtures, to show that a change keeps them bit for bit.

    python tools/same_outputs.py -o before.json [--only sparse/ noise/ ...]   # run the cases (CPU, fp32, 2 threads)
    python tools/same_outputs.py --compare before.json after.json [--only ...]  # case → same / DIFFERENT / missing
    python tools/same_outputs.py --list

Each case runs one feature through public entry points only (`import unbottle`, `unbottle.testing`, `unbottle.cli`,
the reward-batch module wherever it lives) on a freshly built tiny fixture with fixed seeds, and records every output
tensor as sha256 of its raw bytes, dtype and shape (plus mean/std/min/max for a human diff), and small exact values
(scores, counters, token ids). The file holds nothing that varies between runs (no times; paths only in the
tracebacks of failed cases), so two runs of one tree give identical files. `import unbottle` resolves to the tree
this script sits in (its parent folder).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "unbottle" / "__init__.py").is_file() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the tree this copy of the script belongs to, before any installed unbottle

FORMAT = 1
THREADS = 2
PROMPT = "a red circle left of a blue square"
PROMPT_B = "a green star above a yellow triangle"  # a second prompt: patterns loaded from a file must be used
SAME, DIFFERENT, MISSING, ERROR = "same", "DIFFERENT", "missing", "error"

# per-family call arguments: sizes chosen so the largest self-attention has ≥ 3 blocks of BLOCK tokens and runs fast
CALL: dict[str, dict[str, Any]] = {
    "stable_diffusion": dict(height=32, width=32),  # 8 × 8 tokens below the first UNet downsample
    "sdxl": dict(height=32, width=32),
    "sd3": dict(height=16, width=16, max_sequence_length=16),  # 16 × 16 image + 77 + 16 text tokens
    "flux": dict(height=32, width=32, max_sequence_length=16),  # 16 × 16 packed + 16 text tokens
    "pixart": dict(height=32, width=32, use_resolution_binning=False),  # 8 × 8 tokens
    "cogvideox": dict(height=16, width=16, num_frames=9, max_sequence_length=16),  # 3 × 1 × 1 + 16 text tokens
    "wan": dict(height=32, width=32, num_frames=9, max_sequence_length=16),  # 3 × 2 × 2 tokens
    "hunyuan_video": dict(height=32, width=32, num_frames=5, max_sequence_length=16),  # 2 × 4 × 4 + 16 text tokens
    "ltx": dict(height=32, width=32, num_frames=5, max_sequence_length=16),  # 2 × 8 × 8 tokens
}
BLOCK = {"sd3": 8, "flux": 8}  # tokens per sparse block (default 4)
STEPS = 4  # sparse cases: step 0 a refresh (dense + statistics), then sparse steps and refreshes
SPARSE_VARIANTS: dict[str, dict[str, Any]] = {
    "cached": dict(pattern="cached", reshape=True, full_steps=1, refresh_every=1),  # refresh sparse refresh sparse
    "dynamic": dict(pattern="dynamic", reshape=True, full_steps=1, refresh_every=2),  # refresh sparse sparse refresh
    "window": dict(pattern="window", reshape=True, full_steps=1, refresh_every=2),
    "cached-noreshape": dict(pattern="cached", reshape=False, full_steps=0, refresh_every=1),  # sparse from step 0
}
BOTTLENECK_FAMILIES = ("flux", "sd3", "wan", "hunyuan_video", "ltx")
BOTTLENECK_CALL: dict[str, dict[str, Any]] = {  # the half-size stage still has several tokens
    "flux": dict(height=32, width=32, max_sequence_length=16),
    "sd3": dict(height=16, width=16, max_sequence_length=16),
    "wan": dict(height=64, width=64, num_frames=5, max_sequence_length=16),
    "hunyuan_video": dict(height=32, width=32, num_frames=5, max_sequence_length=16),
    "ltx": dict(height=64, width=64, num_frames=5, max_sequence_length=16),
}
PRESET = {"flux": "flux-3x", "sd3": "sd3-2x", "wan": "wan-3x", "hunyuan_video": "hunyuanvideo-2.5x"}
NOISE_CALL: dict[str, dict[str, Any]] = {  # gradient noise optimization (the families with a noise seam)
    "stable_diffusion": dict(num_inference_steps=2, guidance_scale=0.0, height=32, width=32),
    "sdxl": dict(num_inference_steps=2, guidance_scale=0.0, height=32, width=32),
    "pixart": dict(num_inference_steps=2, guidance_scale=1.0, height=32, width=32, use_resolution_binning=False),
    "flux": dict(num_inference_steps=2, height=32, width=32, max_sequence_length=16),
    "sd3": dict(num_inference_steps=2, guidance_scale=0.0, height=16, width=16, max_sequence_length=16),
    "wan": dict(num_inference_steps=2, guidance_scale=4.0, height=32, width=32, num_frames=1, max_sequence_length=16),
}
EXPLORE_CALL: dict[str, dict[str, Any]] = {  # exploration only (best of N seeds): any pipeline
    "cogvideox": dict(num_inference_steps=2, height=16, width=16, num_frames=9, max_sequence_length=16),
    "hunyuan_video": dict(num_inference_steps=2, height=32, width=32, num_frames=5, max_sequence_length=16),
    "ltx": dict(num_inference_steps=2, height=32, width=32, num_frames=5, max_sequence_length=16),
}
GUIDANCE_FAMILIES = ("stable_diffusion", "sdxl", "pixart", "wan")
GUIDANCE_PROMPT = "a red circle and a blue square"
SMALL = ("--height", "32", "--width", "32")  # the embedded model at 32 px: 4 × 4 tokens, 2 × 2 at half size
CLI_IMAGE: dict[str, tuple[str, ...]] = {  # `unbottle image` on the embedded default model (its size: 128 px)
    "": ("--steps", "2"), "-32px": ("--steps", "2", *SMALL),
    "-sparse": ("--steps", "4", *SMALL, "--sparse", "0.5", "--sparse-block-size", "4"),  # refresh, then sparse
    "-structured": ("--steps", "2", *SMALL, "--structured"),
    "-explore": ("--steps", "2", *SMALL, "--explore", "3", "--seed", "1"),  # best of seeds 1, 2, 3
    "-optimize": ("--steps", "2", *SMALL, "--optimize", "3"),
    "-bottleneck": (*SMALL, "--bottleneck-stages", "1:1:1:9,0.5:2:0.8:6,1:1:0.6:none"),
}  # fmt: skip
# a key-value retrieval prompt of the embedded diffusion LM (its answer: v250 v55 v154)
RETRIEVAL_PROMPT = (
    "it k71 = v222 v161 v104 ; and k144 = v244 v226 ; k48 = v133 v31 v7 ; to woman k128 = v47 v204 v0 v252 ; over "
    "k75 = v170 v124 v166 ; k158 = v32 v97 v113 ; painting k50 = v122 v72 v229 ; sphere k37 = v46 v41 v163 ; person "
    "k169 = v250 v55 v154 ; below k241 = v149 v63 v170 ; gray above orange green video moving k51 = v104 v147 v227 "
    "v46 ; dog moves gray k181 = v197 v162 ; query k169 ->"
)
LLADA_KW = dict(gen_length=8, num_inference_steps=4, output_type="seq", eos_early_stop=False, threshold=1.5,
                sampling_method="greedy")  # fmt: skip


# ---- fingerprints -------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A JSON value with non-finite floats spelled out (so files stay strict JSON and compare exactly)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        return _jsonable(item())
    return repr(value)


def _numpy(data: Any) -> tuple[Any, str | None]:
    """(numpy array, dtype name if numpy has none for it) of a tensor, an array, a PIL image or a list of them."""
    import numpy as np

    if hasattr(data, "detach"):  # torch.Tensor
        import torch

        t = data.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # hashed as its raw 16-bit words
            return t.view(dtype=torch.int16).numpy(), "bfloat16"
        return t.numpy(), None
    if hasattr(data, "convert") and hasattr(data, "size"):  # PIL image
        return np.asarray(data), None
    if isinstance(data, (list, tuple)):
        parts = [_numpy(d)[0] for d in data]
        return np.stack(parts), None
    return np.asarray(data), None


def tensor_record(data: Any) -> dict[str, Any]:
    """sha256 of the raw bytes, dtype, shape and summary numbers of one output tensor."""
    import numpy as np

    array, dtype = _numpy(data)
    array = np.ascontiguousarray(array)
    record: dict[str, Any] = {
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
        "dtype": dtype or str(array.dtype),
        "shape": list(array.shape),
    }
    if array.size and dtype is None and (array.dtype.kind in "fiub"):
        a = array.astype(np.float64)
        finite = np.isfinite(a)
        record["nonfinite"] = int(a.size - finite.sum())
        a = a[finite]
        if a.size:
            record.update(mean=float(a.mean()), std=float(a.std()), min=float(a.min()), max=float(a.max()))
    return _jsonable(record)


class Fingerprint:
    """What one case produced: named output tensors (hashed) and small exact values."""

    def __init__(self) -> None:
        self.tensors: dict[str, dict[str, Any]] = {}
        self.values: dict[str, Any] = {}

    def tensor(self, name: str, data: Any) -> None:
        """Record one output tensor (torch, numpy, PIL or a list of them) under `name`."""
        if name in self.tensors:
            raise KeyError(f"tensor {name!r} recorded twice")
        self.tensors[name] = tensor_record(data)

    def value(self, name: str, data: Any) -> None:
        """Record one small exact value (numbers, strings, lists, dicts) under `name`."""
        if name in self.values:
            raise KeyError(f"value {name!r} recorded twice")
        self.values[name] = _jsonable(data)

    def as_dict(self) -> dict[str, Any]:
        """The case's record as written to the file."""
        return {"tensors": self.tensors, "values": self.values}


# ---- comparison -----------------------------------------------------------------------------------------------------


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Which tensors / values of one case differ (by hash, dtype, shape or value), as short phrases."""
    out = []
    for kind in ("tensors", "values"):
        b, a = before.get(kind, {}), after.get(kind, {})
        for key in sorted(set(b) | set(a)):
            if key not in a:
                out.append(f"{kind[:-1]} {key} only before")
            elif key not in b:
                out.append(f"{kind[:-1]} {key} only after")
            elif kind == "tensors":
                fields = [f for f in ("sha256", "dtype", "shape") if b[key].get(f) != a[key].get(f)]
                if fields:
                    out.append(f"{key} ({'/'.join(fields)})")
            elif b[key] != a[key]:
                out.append(f"{key} ({_short(b[key])} → {_short(a[key])})")
    return out


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _selected(name: str, only: Sequence[str]) -> bool:
    return not only or any(name.startswith(prefix) for prefix in only)


def compare(before: dict[str, Any], after: dict[str, Any], only: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(case, status, detail) for every case in either file (`only`: case-name prefixes); status same/DIFFERENT/
    missing/error."""
    b_cases, a_cases = before.get("cases", {}), after.get("cases", {})
    rows = []
    for case in sorted(set(b_cases) | set(a_cases)):
        if not _selected(case, only):
            continue
        if case not in b_cases or case not in a_cases:
            rows.append((case, MISSING, "not in BEFORE" if case not in b_cases else "not in AFTER"))
            continue
        b, a = b_cases[case], a_cases[case]
        errors = [f"{side}: {c['error'].splitlines()[0]}" for side, c in (("before", b), ("after", a)) if "error" in c]
        if errors:
            rows.append((case, ERROR, "; ".join(errors)))
            continue
        diffs = _differences(b, a)
        rows.append((case, DIFFERENT, ", ".join(diffs)) if diffs else (case, SAME, ""))
    return rows


def load_fingerprints(path: str | os.PathLike) -> dict[str, Any]:
    """A fingerprint file written by this script, checked for its shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"error: no fingerprint file {str(path)!r}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {str(path)!r} is not a JSON fingerprint file: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise SystemExit(f"error: {str(path)!r} has no 'cases' object: not a fingerprint file of this script")
    for case, record in data["cases"].items():
        tensors, values = (record.get(k, {}) if isinstance(record, dict) else None for k in ("tensors", "values"))
        if not (isinstance(tensors, dict) and all(isinstance(t, dict) for t in tensors.values())
                and isinstance(values, dict) and isinstance(record.get("error", ""), str)):  # fmt: skip
            raise SystemExit(f"error: {str(path)!r}: case {case!r} is not a fingerprint record (an object with "
                             "'tensors': {name: object}, 'values': object, optionally 'error': string)")  # fmt: skip
    return data


def print_comparison(rows: Sequence[tuple[str, str, str]], before: dict, after: dict, out: Any = None) -> bool:
    """Print the case → status table and a summary; True when every case is the same."""
    out = out or sys.stdout
    for label, data in (("BEFORE", before), ("AFTER", after)):
        meta = data.get("meta", {})
        print(f"{label}: commit {meta.get('commit', '?')}{' + uncommitted changes' if meta.get('dirty') else ''}, "
              f"unbottle {meta.get('unbottle_dir', '?')}", file=out)  # fmt: skip
        if meta.get("foreign_modules"):
            print(f"  warning: modules from another tree: {', '.join(meta['foreign_modules'])}", file=out)
    width = max([len(case) for case, _, _ in rows] + [4])
    print(f"{'case':<{width}}  status     detail", file=out)
    for case, status, detail in rows:
        print(f"{case:<{width}}  {status:<9}  {detail}".rstrip(), file=out)
    counts = {s: sum(1 for _, st, _ in rows if st == s) for s in (SAME, DIFFERENT, MISSING, ERROR)}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)} cases", file=out)
    return bool(rows) and counts[SAME] == len(rows)


# ---- running the cases ----------------------------------------------------------------------------------------------


def _seed(s: int = 0) -> Any:
    import torch

    return torch.Generator().manual_seed(s)


def _reset_rng() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _fixture(name: str) -> Any:
    from unbottle.testing import IMAGE_FIXTURES, VIDEO_FIXTURES

    return {**IMAGE_FIXTURES, **VIDEO_FIXTURES}[name]()


def _denoiser(pipe: Any) -> Any:
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


def _media(output: Any) -> Any:
    return output.frames if hasattr(output, "frames") else output.images


def _generate(pipe: Any, name: str, prompt: str = PROMPT, steps: int = STEPS, **kwargs: Any) -> Any:
    call = {**CALL[name], "num_inference_steps": steps, "output_type": "np", "generator": _seed(0), **kwargs}
    return _media(pipe(prompt, **call))


def _sparse_config(name: str, **kwargs: Any) -> Any:
    import unbottle

    return unbottle.SparseAttentionConfig(density=0.5, block_size=BLOCK.get(name, 4), **kwargs)


class ChannelReward:
    """A differentiable reward: the mean of one colour channel of (B, 3, H, W) pixels in [0, 1] (already a unit)."""

    def __init__(self, channel: int) -> None:
        self.channel = channel

    def __call__(self, images: Any, prompts: list[str]) -> Any:
        return images[:, self.channel].mean((-2, -1))  # (B,)

    def unit(self, scores: Any) -> Any:
        """The scores are already in [0, 1]."""
        return scores


class ChecksumTextReward:
    """A text reward: a checksum of the text in [0, 1), so that different texts (seeds) rank apart."""

    modality = "text"

    def __call__(self, texts: list[str], prompts: list[str]) -> Any:
        import torch

        return torch.tensor([sum(i * ord(c) for i, c in enumerate(t, 1)) % 997 / 997 for t in texts])  # (B,)

    def unit(self, scores: Any) -> Any:
        """The scores are already in [0, 1]."""
        return scores


def case_stock(fp: Fingerprint, name: str) -> None:
    """The fixture's own output: what every other case of the family departs from."""
    pipe = _fixture(name)
    fp.tensor("output", _generate(pipe, name))


def case_sparse(fp: Fingerprint, name: str, variant: str) -> None:
    """`enable_sparse_attention` with one pattern/reshape variant: two calls, counters, then disabled."""
    import unbottle

    pipe = _fixture(name)
    handle = unbottle.enable_sparse_attention(pipe, _sparse_config(name, **SPARSE_VARIANTS[variant]))
    try:
        fp.tensor("output", _generate(pipe, name))
        fp.value("pattern_computations", dict(sorted(handle.pattern_computations.items())))
        fp.tensor("output_second_call", _generate(pipe, name))  # nothing carries over between calls
    finally:
        unbottle.disable_sparse_attention(pipe)
    fp.tensor("output_after_disable", _generate(pipe, name))


def case_drop_in(fp: Fingerprint, name: str) -> None:
    """The drop-in form, `set_attn_processor(SparseAttnProcessor(cfg))`, then `disable_sparse_attention`."""
    import unbottle

    pipe = _fixture(name)
    _denoiser(pipe).set_attn_processor(unbottle.SparseAttnProcessor(_sparse_config(name, **SPARSE_VARIANTS["cached"])))
    try:
        fp.tensor("output", _generate(pipe, name))
    finally:
        unbottle.disable_sparse_attention(pipe)
    fp.tensor("output_after_disable", _generate(pipe, name))


def case_pattern_file(fp: Fingerprint, name: str) -> None:
    """save_head_patterns, disable, enable, load_head_patterns, then a run on another prompt."""
    import unbottle

    pipe = _fixture(name)
    config = _sparse_config(name, **SPARSE_VARIANTS["cached"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patterns.safetensors"
        unbottle.enable_sparse_attention(pipe, config)
        try:
            fp.tensor("output_saved_run", _generate(pipe, name))
            unbottle.save_head_patterns(pipe, path)
        finally:
            unbottle.disable_sparse_attention(pipe)
        from safetensors.torch import load_file

        tensors = load_file(path)
        fp.value("file_tensors", {key: tensor_record(tensors[key]) for key in sorted(tensors)})
        unbottle.enable_sparse_attention(pipe, config)
        try:
            fp.value("loaded", unbottle.load_head_patterns(pipe, path))
            fp.tensor("output_loaded_other_prompt", _generate(pipe, name, prompt=PROMPT_B))
        finally:
            unbottle.disable_sparse_attention(pipe)
    unbottle.enable_sparse_attention(pipe, config)  # the other prompt with its own patterns: differs from the above
    try:
        fp.tensor("output_own_patterns_other_prompt", _generate(pipe, name, prompt=PROMPT_B))
    finally:
        unbottle.disable_sparse_attention(pipe)


def _scaled(stages: Sequence[Any], total: int = 4) -> list[Any]:
    """A preset's stages with its steps scaled down to about `total` (each ≥ 1), all else kept."""
    import dataclasses

    steps = sum(s.steps for s in stages)
    return [dataclasses.replace(s, steps=max(1, round(s.steps * total / steps))) for s in stages]


def case_bottleneck(fp: Fingerprint, name: str, kind: str) -> None:
    """BottleneckSampler: a custom 3-stage list, a family preset scaled down, or stages + sparse attention."""
    import warnings

    import unbottle

    pipe = _fixture(name)
    Stage = unbottle.Stage
    if kind.startswith("stages"):  # the last stage on the pipeline's own σ schedule (shift None)
        stages = [Stage(scale=1.0, steps=1, strength=1.0, shift=9.0),
                  Stage(scale=0.5, steps=1, strength=0.8, shift=6.0),
                  Stage(scale=1.0, steps=2, strength=0.6, shift=None)]  # fmt: skip
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the preset of this family: no warning
            preset = unbottle.BottleneckSampler.from_preset(pipe, PRESET[name])
        fp.value("preset_stages", [[s.scale, s.steps, s.strength, s.shift] for s in preset.stages])
        stages = _scaled(preset.stages)
    fp.value("stages", [[s.scale, s.steps, s.strength, s.shift] for s in stages])
    sampler = unbottle.BottleneckSampler(pipe, stages)
    sparse = kind == "stages+sparse"
    if sparse:
        unbottle.enable_sparse_attention(pipe, _sparse_config(name, **SPARSE_VARIANTS["cached"]))
    try:
        out = sampler(PROMPT, generator=_seed(0), output_type="np", **BOTTLENECK_CALL[name])
    finally:
        if sparse:
            unbottle.disable_sparse_attention(pipe)
    fp.tensor("output", _media(out))


def case_noise_optimize(fp: Fingerprint, name: str) -> None:
    """NoiseSearch gradient optimization: 1 seed × 2 iterations with differentiable channel rewards."""
    import unbottle

    pipe = _fixture(name)
    search = unbottle.NoiseSearch(pipe, {"red": (ChannelReward(0), 1.0), "blue": (ChannelReward(2), 0.5)}, seeds=[3],
                                  iterations=2, lr=5.0, progress=False)  # fmt: skip
    result = search(PROMPT, output_type="np", **NOISE_CALL[name])
    fp.tensor("images", result.images)
    fp.tensor("latents", result.latents)
    fp.value("result", dict(seed=result.seed, iteration=result.iteration, loss=result.loss, scores=result.scores,
                            units=result.units))  # fmt: skip
    fp.value("history", {str(seed): [[s.iteration, s.loss, s.objective, s.scores, s.reg, s.grad_norms, s.update_norm]
                                     for s in steps] for seed, steps in result.history.items()})  # fmt: skip


def _objectives(result: Any) -> dict[str, list[float]]:
    """Each seed's objective per iteration."""
    return {str(seed): [s.objective for s in steps] for seed, steps in result.history.items()}


def case_noise_explore(fp: Fingerprint, name: str) -> None:
    """NoiseSearch exploration (best of 2 seeds) on a pipeline without a noise-optimization seam."""
    import unbottle

    pipe = _fixture(name)
    search = unbottle.NoiseSearch(pipe, {"red": (ChannelReward(0), 1.0)}, seeds=2, iterations=0, progress=False)
    result = search(PROMPT, output_type="np", **EXPLORE_CALL[name])
    fp.tensor("images", result.images)
    fp.value("result", dict(seed=result.seed, loss=result.loss, scores=result.scores, history=_objectives(result)))


def case_noise_explore_text(fp: Fingerprint) -> None:
    """NoiseSearch exploration on the stock LLaDA2 pipeline, scored by a text reward."""
    import unbottle
    from unbottle.testing import tiny_llada2_pipeline

    pipe = tiny_llada2_pipeline()
    rewards = {"checksum": (ChecksumTextReward(), 1.0)}
    search = unbottle.NoiseSearch(pipe, rewards, seeds=3, iterations=0, progress=False)
    result = search("a red circle", **{**LLADA_KW, "output_type": "text", "sampling_method": "multinomial",
                                       "temperature": 1.0})  # fmt: skip
    fp.tensor("sequences", result.output.sequences)
    fp.value("result", dict(seed=result.seed, texts=list(result.images), scores=result.scores,
                            history=_objectives(result)))  # fmt: skip


def case_guidance(fp: Fingerprint, name: str, mode: str) -> None:
    """enable_structured_guidance (builtin parser) in one mode, then disabled."""
    import unbottle

    pipe = _fixture(name)
    fp.value("phrases", unbottle.noun_phrases(GUIDANCE_PROMPT, parser="builtin"))
    unbottle.enable_structured_guidance(pipe, parser="builtin", mode=mode)
    try:
        fp.tensor("output", _generate(pipe, name, prompt=GUIDANCE_PROMPT, steps=2))
    finally:
        unbottle.disable_structured_guidance(pipe)
    fp.tensor("output_after_disable", _generate(pipe, name, prompt=GUIDANCE_PROMPT, steps=2))


class _Logits:
    """Every forward's logits of a transformers model (a torch forward hook), hashed in one record."""

    def __init__(self, model: Any) -> None:
        self.digest, self.calls, self.shapes = hashlib.sha256(), 0, set()
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        logits = output.logits if hasattr(output, "logits") else output[0]
        array = logits.detach().float().cpu().contiguous().numpy()
        self.digest.update(array.tobytes())
        self.calls += 1
        self.shapes.add(tuple(array.shape))

    def record(self, fp: Fingerprint) -> None:
        """Remove the hook; record the digest of all logits, the number of forwards and the logits' shapes."""
        self.handle.remove()
        fp.value("logits", {"sha256": self.digest.hexdigest(), "forwards": self.calls,
                            "shapes": sorted(list(s) for s in self.shapes)})  # fmt: skip


def case_dlm_generate(fp: Fingerprint, kind: str) -> None:
    """DiffusionLMPipeline on the tiny LLaDA2 model: a batch of 2 prompts, greedy or sampled with CFG."""
    import unbottle
    from unbottle.testing import tiny_llada2

    model, tok = tiny_llada2()
    pipe = unbottle.DiffusionLMPipeline(model, tok)
    pipe.set_progress_bar_config(disable=True)
    options = {"greedy": {}, "sampled": dict(remasking="random", temperature=0.8, cfg_scale=0.5)}[kind]
    logits = _Logits(model)
    out = pipe(["a red circle", "two blue squares left of a star"], gen_length=8, steps=4, block_length=4,
               generator=[_seed(0), _seed(1)], **options)  # fmt: skip
    logits.record(fp)
    fp.tensor("sequences", out.sequences)
    fp.value("texts", out.texts)


def case_dlm_sparse(fp: Fingerprint, variant: str) -> None:
    """SparseD (enable_sparse_attention on the transformers model) under DiffusionLMPipeline."""
    import unbottle
    from unbottle.testing import tiny_llada2

    model, tok = tiny_llada2()
    pipe = unbottle.DiffusionLMPipeline(model, tok)
    pipe.set_progress_bar_config(disable=True)
    handle = unbottle.enable_sparse_attention(model, _sparse_config("llada2", **SPARSE_VARIANTS[variant]))
    logits = _Logits(model)
    try:
        out = pipe("a red circle left of a blue square", gen_length=16, steps=8, block_length=8, generator=_seed(0))
        fp.value("pattern_computations", dict(sorted(handle.pattern_computations.items())))
    finally:
        unbottle.disable_sparse_attention(model)
    logits.record(fp)
    fp.tensor("sequences", out.sequences)
    fp.value("texts", out.texts)


def case_stock_dlm(fp: Fingerprint, fixture: str, sparse: bool) -> None:
    """A stock diffusers DLM pipeline (LLaDA2 or DiffusionGemma), with or without sparse attention."""
    import unbottle
    from unbottle.testing import tiny_diffusion_gemma_pipeline, tiny_llada2_pipeline

    if fixture == "llada2-pipeline":  # enabled on the pipeline (it knows its mask token)
        pipe, kwargs = tiny_llada2_pipeline(), dict(LLADA_KW)
        target, config = pipe, _sparse_config("llada2", **SPARSE_VARIANTS["cached"])
    else:  # enabled on its transformers model; canvases of 4 tokens: blocks of 2
        pipe, kwargs = tiny_diffusion_gemma_pipeline(), dict(gen_length=8, num_inference_steps=2, output_type="seq")
        target = pipe.model
        config = unbottle.SparseAttentionConfig(density=0.5, block_size=2, reshape=False, full_steps=0)
    handle = unbottle.enable_sparse_attention(target, config) if sparse else None
    logits = _Logits(pipe.model)
    try:
        out = pipe(prompt="a red circle", generator=_seed(0), **kwargs)
        if handle is not None:
            fp.value("pattern_computations", dict(sorted(handle.pattern_computations.items())))
    finally:
        if sparse:
            unbottle.disable_sparse_attention(target)
    logits.record(fp)
    fp.tensor("sequences", out.sequences)


def batch_module() -> Any:
    """The reward-batch runner's module: `unbottle.batch`, else its earlier home `unbottle.pipelines.reward_batch`.

    Looked up in the imported package's own folder: an editable install's import hook would otherwise find a
    `unbottle.batch` of another tree when this one has none."""
    import unbottle

    here = any((Path(d) / "batch" / "__init__.py").is_file() or (Path(d) / "batch.py").is_file()
               for d in unbottle.__path__)  # fmt: skip
    return importlib.import_module("unbottle.batch" if here else "unbottle.pipelines.reward_batch")


def case_batch(fp: Fingerprint) -> None:
    """run_batch: 2 prompts × 2 candidates scored by channel rewards; scores, ranking and the PNGs' pixels."""
    import numpy as np
    from PIL import Image

    batch = batch_module()
    pipe = _fixture("stable_diffusion")
    prompts = ["a red circle", "a blue square to the left of a green star"]
    config = batch.BatchConfig(n=2, rewards={"red": 1.0, "blue": 0.5}, seed=7, batch_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        rewards = {"red": ChannelReward(0), "blue": ChannelReward(2)}
        call = dict(height=32, width=32, num_inference_steps=2)
        result = batch.run_batch(pipe, prompts, tmp, config, rewards=rewards, call_kwargs=call, progress=False)
        records = sorted(result.records, key=lambda r: (r["prompt_index"], r["candidate"]))
        fp.tensor("images", [np.asarray(Image.open(Path(tmp) / r["image"]).convert("RGB")) for r in records])
    keep = ("prompt_index", "candidate", "seed", "scores", "units", "combined", "rank")
    fp.value("records", [{k: r.get(k) for k in keep} for r in records])
    fp.value("best", [[entry.get("best", {}).get(k) for k in ("candidate", "seed", "combined")]
                      for entry in result.ranking])  # fmt: skip


def case_shapes_clip(fp: Fingerprint) -> None:
    """The shipped shapes-clip reward on rendered shapes images: scores, units and the pixel gradient."""
    import random

    import numpy as np
    import torch

    import unbottle
    from unbottle.shapes import caption, render_image, sample_scene

    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(4)]
    images = torch.from_numpy(np.stack([render_image(s, 64) for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    prompts = [caption(s, random.Random(i)) for i, s in enumerate(scenes)]
    prompts = [prompts[1], prompts[0], prompts[3], prompts[2]]  # half matched, half swapped
    fp.value("default", unbottle.rewards.DEFAULT)
    fp.tensor("input_images", images)
    fp.value("prompts", prompts)
    reward = unbottle.load_reward("shapes-clip")
    pixels = images.clone().requires_grad_(True)  # (B, 3, H, W)
    scores = reward(pixels, prompts)  # (B,)
    (grad,) = torch.autograd.grad(scores.sum(), pixels)
    fp.tensor("scores", scores)
    fp.tensor("units", reward.unit(scores.detach()))
    fp.tensor("grad", grad)


def _cli(argv: Sequence[str]) -> tuple[int, str]:
    """`unbottle.cli.main(argv)` with its output captured: (exit status, stderr)."""
    import contextlib
    import io

    from unbottle.cli import main as cli_main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    if code != 0:
        raise RuntimeError(f"unbottle {argv[0]} exited {code}: {err.getvalue().strip()[-300:]}")
    return code, err.getvalue()


def case_cli_image(fp: Fingerprint, extra: Sequence[str]) -> None:
    """`unbottle image` on the embedded default model; the PNG's pixels."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.png"
        _cli(["image", PROMPT, "-q", "-o", str(path), *extra])
        fp.tensor("pixels", np.asarray(Image.open(path).convert("RGB")))


def case_cli_text(fp: Fingerprint, extra: Sequence[str]) -> None:
    """`unbottle text` on the embedded retrieval diffusion LM; the text it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.txt"
        _cli(["text", RETRIEVAL_PROMPT, "-q", "-o", str(path), *extra])
        fp.value("text", path.read_text(encoding="utf-8"))


def case_cli_batch(fp: Fingerprint) -> None:
    """`unbottle batch` on the embedded model: scores, ranking and the PNGs' pixels."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        prompts, out = Path(tmp) / "prompts.txt", Path(tmp) / "out"
        prompts.write_text("a red circle\n# a comment\n\na blue square left of a green star\n", encoding="utf-8")
        _cli(["batch", str(prompts), "--n", "2", "--steps", "2", "--height", "32", "--width", "32", "-q", "-o",
              str(out)])  # fmt: skip
        lines = (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()
        records = sorted((json.loads(line) for line in lines), key=lambda r: (r["prompt_index"], r["candidate"]))
        fp.tensor("images", [np.asarray(Image.open(out / r["image"]).convert("RGB")) for r in records])
        ranking = json.loads((out / "ranking.json").read_text(encoding="utf-8"))
    keep = ("prompt_index", "prompt", "candidate", "seed", "scores", "units", "combined", "rank")
    fp.value("records", [{k: r.get(k) for k in keep} for r in records])
    fp.value("best", [[entry["best"][k] for k in ("candidate", "seed", "combined")] for entry in ranking["prompts"]])


def cases() -> dict[str, Callable[[Fingerprint], None]]:
    """Every case, by name (`family/feature/variant`-like paths, so `--only` prefixes select groups)."""
    from functools import partial

    table: dict[str, Callable[[Fingerprint], None]] = {}
    for name in CALL:
        table[f"stock/{name}"] = partial(case_stock, name=name)
        for variant in SPARSE_VARIANTS:
            table[f"sparse/{name}/{variant}"] = partial(case_sparse, name=name, variant=variant)
    table["sparse/flux/drop-in"] = partial(case_drop_in, name="flux")
    table["sparse/flux/pattern-file"] = partial(case_pattern_file, name="flux")
    for name in BOTTLENECK_FAMILIES:
        table[f"bottleneck/{name}/stages"] = partial(case_bottleneck, name=name, kind="stages")
        if name in PRESET:
            table[f"bottleneck/{name}/preset"] = partial(case_bottleneck, name=name, kind="preset")
    table["bottleneck/flux/stages+sparse"] = partial(case_bottleneck, name="flux", kind="stages+sparse")
    for name in NOISE_CALL:
        table[f"noise/{name}/optimize"] = partial(case_noise_optimize, name=name)
    for name in EXPLORE_CALL:
        table[f"noise/{name}/explore"] = partial(case_noise_explore, name=name)
    table["noise/llada2-pipeline/explore"] = case_noise_explore_text
    for name in GUIDANCE_FAMILIES:
        for mode in ("average", "conjunction"):
            table[f"guidance/{name}/{mode}"] = partial(case_guidance, name=name, mode=mode)
    for kind in ("greedy", "sampled"):
        table[f"dlm/llada2/generate-{kind}"] = partial(case_dlm_generate, kind=kind)
    for variant in SPARSE_VARIANTS:
        table[f"dlm/llada2/sparse-{variant}"] = partial(case_dlm_sparse, variant=variant)
    for fixture in ("llada2-pipeline", "diffusion-gemma-pipeline"):
        table[f"dlm/{fixture}/stock"] = partial(case_stock_dlm, fixture=fixture, sparse=False)
        table[f"dlm/{fixture}/sparse"] = partial(case_stock_dlm, fixture=fixture, sparse=True)
    table["batch/stable_diffusion"] = case_batch
    table["reward/shapes-clip"] = case_shapes_clip
    for variant, extra in CLI_IMAGE.items():
        table[f"cli/image{variant}"] = partial(case_cli_image, extra=extra)
    table["cli/text"] = partial(case_cli_text, extra=())
    table["cli/text-sparse"] = partial(case_cli_text, extra=("--sparse", "0.5"))
    table["cli/batch"] = case_cli_batch
    return table


def _quiet_libraries() -> None:
    import warnings

    warnings.simplefilter("ignore")
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        with_logging = importlib.import_module(module)
        with_logging.set_verbosity_error()
        with_logging.disable_progress_bar()


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _meta() -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    import unbottle

    package = Path(unbottle.__file__).resolve().parent
    return {
        "format": FORMAT,
        "unbottle_dir": str(package),
        "commit": _git(["rev-parse", "HEAD"], package),
        "dirty": bool(_git(["status", "--porcelain", "--", package.name], package.parent)),  # the package's files
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }


def foreign_modules() -> list[str]:
    """Loaded `unbottle` modules whose file is outside the imported package's folder (another tree's, through an
    editable install's import hook): a run that has any did not measure one tree."""
    import unbottle

    package = Path(unbottle.__file__).resolve().parent
    foreign = []
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        ours = name == "unbottle" or name.startswith("unbottle.")
        if ours and file and package not in Path(file).resolve().parents:
            foreign.append(f"{name} ({file})")
    return foreign


def run_cases(only: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the selected cases; each case's record or its error, and the run's environment."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(THREADS)
    _quiet_libraries()
    import unbottle

    log(f"unbottle: {unbottle.__file__}")
    table = {name: fn for name, fn in cases().items() if _selected(name, only)}
    if not table:
        raise SystemExit(f"error: --only {' '.join(only)} selects no case; see --list")
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for i, (name, fn) in enumerate(table.items(), 1):
        _reset_rng()
        fp = Fingerprint()
        t0 = time.perf_counter()
        try:
            fn(fp)
            results[name] = fp.as_dict()
            status = "ok"
        except Exception as e:  # noqa: BLE001 (a failing case is recorded, the others still run)
            results[name] = {**fp.as_dict(), "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"}
            status = f"ERROR {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log(f"[{i:3d}/{len(table)}] {name:<44} {time.perf_counter() - t0:6.1f} s  {status}")
    log(f"{len(table)} cases in {time.perf_counter() - start:.1f} s")
    return {"meta": {**_meta(), "foreign_modules": foreign_modules()}, "cases": results}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fingerprint every feature's outputs on the tiny fixtures, or compare two fingerprint files."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("-o", "--output", metavar="FILE.json", help="run the cases and write their fingerprints")
    mode.add_argument("--compare", nargs=2, metavar=("BEFORE.json", "AFTER.json"), help="compare two files")
    mode.add_argument("--list", action="store_true", help="list the case names")
    parser.add_argument("--only", nargs="+", action="extend", default=[], metavar="CASE_PREFIX",
                        help="only the cases whose names start with one of these prefixes")  # fmt: skip
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """Command line: run (-o), compare (--compare) or list (--list); returns the exit status."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.list:
        for name in cases():
            if _selected(name, args.only):
                print(name)
        return 0
    if args.compare:
        before, after = (load_fingerprints(p) for p in args.compare)
        rows = compare(before, after, args.only)
        if not rows:
            print(f"error: --only {' '.join(args.only)} selects no case in either file", file=sys.stderr)
            return 1
        return 0 if print_comparison(rows, before, after) else 1

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    data = run_cases(args.only, log)
    output = Path(args.output)
    output.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    errors = [name for name, record in data["cases"].items() if "error" in record]
    log(f"wrote {output}" + (f"; {len(errors)} cases failed: {', '.join(errors)}" if errors else ""))
    foreign = data["meta"]["foreign_modules"]
    if foreign:
        log(f"error: {len(foreign)} unbottle modules came from outside {data['meta']['unbottle_dir']}: "
            + ", ".join(foreign))  # fmt: skip
    return 1 if errors or foreign else 0


if __name__ == "__main__":
    sys.exit(main())

"""The batch runner: generate N candidates per prompt, score them with the weighted rewards, rank and write them.

The pipeline is always called with `batch_size` samples (a short last batch is padded with repeats whose results are
dropped), so a candidate's image depends on its prompt, its seed and `batch_size` only: not on which other candidates
share its batch, on resuming or on the number of processes. With `batch_size=1` it is exactly the image of
`unbottle image PROMPT --seed S` with the same model and settings; larger batches agree with it up to float rounding
(at most about 1/255 on a pixel). Video pipelines make 1-frame videos and the frame is the image, as `unbottle image`
does. Rewards score the 8-bit image as written, without gradients.

Several processes (`accelerate launch`): pass the `accelerate.PartialState` (or let `run_batch` make one). The
unfinished candidates are split between the processes with `split_between_processes` (contiguous runs, so a
process's candidates mostly share prompts; on a resume only the unfinished work is shared out), each process appends
to its own shard, and the main process merges all shards after `wait_for_everyone()`. Resuming works with any
number of processes: every process reads all shards.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rewards import load_reward
from .config import BatchConfig, BatchResult, combined_score, finite
from .identity import check_resume, run_identity
from .lock import lock_output
from .report import rank_records, write_reports
from .store import (
    IMAGES,
    RUN_FILE,
    TEMPORARY,
    compact_shards,
    image_name,
    inside,
    load_records,
    write_atomic,
    write_text,
)

_RESERVED = ("prompt", "generator", "output_type", "latents", "num_images_per_prompt", "num_videos_per_prompt")


def _signature(pipe: object) -> inspect.Signature:
    return inspect.signature(pipe.__call__)


def _pipe_device(pipe: object) -> torch.device:
    device = getattr(pipe, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.type == "cpu" or (a.index or 0) == (b.index or 0))


class _Scorer:
    """Scores uint8 images with the weighted rewards: per-reward raw and unit scores, and the combined score."""

    def __init__(self, config: BatchConfig, models: Mapping[str, Callable], device: torch.device) -> None:
        self.config, self.models, self.device = config, models, device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, prompts: list[str]) -> list[dict]:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
        raw, unit = {}, {}
        for name, _ in self.config.rewards:
            model = self.models[name]
            scores = torch.as_tensor(model(pixels, prompts)).detach().float().reshape(-1)
            if scores.numel() != len(prompts):
                raise ValueError(f"reward {name!r} returned {scores.numel()} scores for {len(prompts)} images")
            units = torch.as_tensor(model.unit(scores)).float().reshape(-1) if hasattr(model, "unit") else scores
            raw[name], unit[name] = scores.cpu().tolist(), units.cpu().tolist()
        rows = []
        for b in range(len(prompts)):
            units = {k: finite(v[b]) for k, v in unit.items()}
            rows.append({"scores": {k: finite(v[b]) for k, v in raw.items()}, "units": units,
                         "combined": combined_score(units, self.config)})  # fmt: skip
        return rows


def _generate(pipe: object, prompts: list[str], seeds: list[int], call_kwargs: Mapping[str, Any],
              video: bool) -> np.ndarray:  # fmt: skip
    """(B, H, W, 3) uint8 images for the prompts with one CPU generator per seed."""
    kwargs = dict(call_kwargs)
    if video:
        kwargs["num_frames"] = 1
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompt=prompts, generator=generators, output_type="np", **kwargs)
    images = out.frames if hasattr(out, "frames") else out.images
    images = images.float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim == 5:  # (B, F, H, W, 3): the first frame
        images = images[:, 0]
    if images.ndim != 4 or images.shape[0] != len(prompts) or images.shape[-1] != 3:
        raise ValueError(f"{type(pipe).__name__} returned images of shape {images.shape}, expected (B, H, W, 3)")
    if images.dtype != np.uint8:
        images = (np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return images


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    write_atomic(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def _check_call_kwargs(pipe: object, call_kwargs: Mapping[str, Any], video: bool) -> None:
    for key in call_kwargs:
        if key in _RESERVED:
            raise ValueError(f"call_kwargs[{key!r}]: run_batch sets {', '.join(_RESERVED[:3])} itself; leave it out")
    frames = call_kwargs.get("num_frames")
    if video and frames not in (None, 1):
        raise ValueError(f"call_kwargs['num_frames']={frames!r}: reward batches make images; video pipelines run "
                         "1-frame videos")  # fmt: skip
    params = _signature(pipe).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(call_kwargs) - set(params))
        if unknown:
            raise ValueError(f"call_kwargs: {type(pipe).__name__} takes no {', '.join(unknown)}")


def make_state(device: str | torch.device | None = None) -> Any:
    """accelerate's `PartialState` for `device` (cpu=True for the CPU: gloo across processes under a launcher)."""
    from accelerate import PartialState

    cpu = device is not None and torch.device(device).type == "cpu"
    if device is None:
        cpu = not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _check_world(state: Any) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and state.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes but the PartialState sees {state.num_processes}: every process would "
            "make every candidate; create it with PartialState(cpu=True) on the CPU (see make_state)"
        )


def run_batch(
    pipe: object,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    config: BatchConfig | None = None,
    *,
    rewards: Mapping[str, Callable] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    state: Any = None,
    model: str | None = None,
    extra_identity: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    wait: bool = True,
) -> BatchResult:
    """Generate `config.n` candidates per prompt, score, rank and write them to `out_dir`, resuming a previous run.

    `rewards` maps the names in `config.rewards` to loaded reward callables (`(images (B,3,H,W) in [0,1], prompts)
    -> (B,)`, optionally with `.unit`); names not given are loaded with `unbottle.load_reward` on the process's
    device. `call_kwargs` go to every pipeline call (steps, size, guidance, ...). `state` is accelerate's
    `PartialState` (default: `make_state` for the pipeline's device); with several processes each process runs on
    `state.device`. `model` and `extra_identity` are recorded in `run.json` and must match on resume. The run holds
    `out_dir` throughout (`lock_output`): if another run holds it, this one waits for it (`wait=False`: raises
    `OutputLockedError`). Every process returns the same merged result."""
    config = config or BatchConfig()
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts: give at least one prompt")
    call_kwargs = dict(call_kwargs or {})
    video = "num_frames" in _signature(pipe).parameters
    _check_call_kwargs(pipe, call_kwargs, video)
    state = state if state is not None else make_state(_pipe_device(pipe))
    _check_world(state)
    device = _pipe_device(pipe)
    if state.num_processes > 1 and not _same_device(device, torch.device(state.device)):
        pipe.to(state.device)
        device = torch.device(state.device)
    say = log if (log is not None and state.is_main_process) else (lambda _: None)
    out_dir = Path(out_dir).expanduser()
    model = model if model is not None else str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)
    identity = run_identity(prompts, config, call_kwargs, model, extra_identity)
    check_resume(out_dir, identity)  # every process, before any waits: a mismatch stops them all alike
    models = dict(rewards or {})
    for name, _ in config.rewards:
        if name not in models:
            models[name] = load_reward(name, device=device)
    scorer = _Scorer(config, models, device)
    with lock_output(out_dir, state, wait=wait, log=say):
        return _run_locked(pipe, prompts, out_dir, config, scorer, call_kwargs, video, state, identity, progress,
                           say)  # fmt: skip


def _run_locked(pipe: object, prompts: list[str], out_dir: Path, config: BatchConfig, scorer: _Scorer,
                call_kwargs: dict, video: bool, state: Any, identity: dict, progress: bool,
                say: Callable[[str], None]) -> BatchResult:  # fmt: skip
    """`run_batch` while this run holds the output folder."""
    check_resume(out_dir, identity)  # again: a run that held the folder meanwhile may have started it
    if not inside(out_dir / IMAGES, out_dir.resolve()):
        raise ValueError(f"{str(out_dir / IMAGES)!r} links outside the output folder; remove the link")
    if state.is_main_process:
        (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
        if not (out_dir / RUN_FILE).exists():
            write_text(out_dir / RUN_FILE, json.dumps(identity, indent=1, ensure_ascii=False) + "\n")
        for folder in (out_dir, out_dir / IMAGES):  # what a kill left half-written
            for tmp in folder.glob("*.tmp*"):
                if TEMPORARY.search(tmp.name):
                    tmp.unlink(missing_ok=True)
        dropped = compact_shards(out_dir, prompts, config)  # before anyone appends: one line per finished candidate
        if dropped:
            count = sum(dropped.values())
            reasons = ", ".join(f"{reason}: {k}" for reason, k in sorted(dropped.items(), key=lambda x: -x[1]))
            say(f"dropped {count} record{'s' if count != 1 else ''} of {out_dir} that do not match this run "
                f"({reasons}); their candidates are made again")  # fmt: skip
    state.wait_for_everyone()
    done = load_records(out_dir, prompts, config)
    state.wait_for_everyone()  # all have read the shards before anyone appends
    pending = [(i, j) for i in range(len(prompts)) for j in range(config.n) if (i, j) not in done]
    total = len(prompts) * config.n
    if done:
        say(f"resuming {out_dir}: {len(done)} of {total} candidates done, {len(pending)} to go")
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
    generated = 0
    if mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="candidates", unit="img", disable=not (progress and state.is_main_process))
        shard = out_dir / f"scores.rank{state.process_index}.jsonl"
        with open(shard, "ab") as log_file:
            for start in range(0, len(mine), config.batch_size):
                jobs = mine[start : start + config.batch_size]
                padded = jobs + [jobs[-1]] * (config.batch_size - len(jobs))  # fixed batch shape: same numerics
                texts = [prompts[i] for i, _ in padded]
                images = _generate(pipe, texts, [config.seed_of(j) for _, j in padded], call_kwargs, video)
                rows = scorer(images, texts)
                for b, (i, j) in enumerate(jobs):
                    name = image_name(i, j)
                    _save_png(out_dir / name, images[b])
                    record = {"prompt_index": i, "prompt": prompts[i], "candidate": j, "seed": config.seed_of(j),
                              **rows[b], "image": name, "process": state.process_index}  # fmt: skip
                    log_file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                    log_file.flush()
                    os.fsync(log_file.fileno())
                    generated += 1
                    bar.update(1)
        bar.close()
    state.wait_for_everyone()
    records = load_records(out_dir, prompts, config)
    if state.is_main_process:
        ordered, ranking = write_reports(out_dir, prompts, config, records)
    else:
        ordered, ranking = rank_records(records, prompts)
    state.wait_for_everyone()  # the reports exist when any process returns
    if len(ordered) != total:
        raise RuntimeError(f"{out_dir}: only {len(ordered)} of {total} candidates were written; run again to resume")
    return BatchResult(out_dir=out_dir, records=ordered, ranking=ranking, generated=generated, resumed=len(done))



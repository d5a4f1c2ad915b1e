"""Quality of sparse attention on the shapes model's clips, where the block choice matters most.

    unbottle bench quality --video -o bench/results --sparse 0.1,0.2,0.3 --sparse-patterns cached,window,dynamic
        --reshape on,off --sparse-block-sizes 32,64                          # one command; CPU or GPU

The shipped shapes WanPipeline generates the held-out motion captions (seed 10,001: the model card's set; another
`--caption-seed` draws a tuning set) as `--frames`-frame clips, once dense ("stock") and once per sparse setting,
every clip from the same noise in every row (chunk i of the captions from generator seed i). The default 33-frame
clip is 9 latent frames of 16 × 16 tokens: 2,304 tokens, 36 key blocks of 64. Each row reports the shapes evaluator
on the clips (accuracy: every fact of a caption right, motion included; the fraction of facts right; each fact type's
accuracy), PSNR in dB against the stock clips over all frames and pixels of the set, the realized density (kept tiles
/ all tiles the sparse steps computed, `SparseAttentionHandle.realized_density`) and the seconds of the generation.
Writes quality-shapes-video.json and quality-shapes-video.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch

from ...shapes import call_defaults, caption, load_pipeline, sample_scene
from .options import VIDEO_HELD_OUT_SEED, SparseSetting, VideoQualityOptions
from .scores import score_row


def held_out_video_captions(n: int, seed: int = VIDEO_HELD_OUT_SEED) -> list[str]:
    """The held-out motion captions: `n` video scenes drawn from `seed`, then their captions (the model card's draw,
    so the first `n` scenes are the same for any larger `n`; only the verb, "moving" or "moves", may differ)."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, video=True) for _ in range(n)]
    return [caption(scene, rng) for scene in scenes]


@torch.no_grad()
def generate_clips(pipe: object, captions: list[str], steps: int, batch: int, frames: int) -> np.ndarray:
    """(n, frames, H, W, 3) uint8 clips; chunk i of the captions uses generator seed i, so every setting sees the
    same noise."""
    kwargs = {**call_defaults("t2v"), "num_inference_steps": steps, "num_frames": frames, "output_type": "np"}
    clips = []
    for i in range(0, len(captions), batch):
        gen = torch.Generator().manual_seed(i)
        videos = pipe(captions[i : i + batch], generator=gen, **kwargs).frames  # (b, F, H, W, 3) in [0, 1]
        clips += [(np.asarray(v) * 255).round().astype(np.uint8) for v in videos]
    return np.stack(clips)


def sparse_clips(
    pipe: object, captions: list[str], setting: SparseSetting, options: VideoQualityOptions
) -> tuple[np.ndarray, float | None, float]:
    """The clips under one sparse setting, its realized density (None if no step ran sparse) and the seconds."""
    from ...attention_processors import SparseAttentionConfig, disable_sparse_attention, enable_sparse_attention

    config = SparseAttentionConfig(**setting.config_kwargs())
    handle = enable_sparse_attention(pipe, config)
    try:
        start = time.perf_counter()
        clips = generate_clips(pipe, captions, options.steps, options.batch, options.frames)
        seconds = time.perf_counter() - start
        density = handle.realized_density
    finally:
        disable_sparse_attention(pipe)
    return clips, density, seconds


def run_video_quality(
    options: VideoQualityOptions, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """Generate the held-out motion captions as clips, dense and per sparse setting (`options.grid()`); score each."""
    pipe = load_pipeline("t2v", device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    captions = held_out_video_captions(options.captions, options.seed)
    start = time.perf_counter()
    stock = generate_clips(pipe, captions, options.steps, options.batch, options.frames)
    rows = [score_row("stock", stock, captions, stock, time.perf_counter() - start)]
    rows[0].update(density=None, pattern=None, reshape=None, block_size=None, realized_density=None)
    log(f"stock: accuracy {rows[0]['accuracy']:.3f}")
    def run_row(setting: SparseSetting) -> float | None:
        clips, density, seconds = sparse_clips(pipe, captions, setting, options)
        row = score_row(setting.name, clips, captions, stock, seconds)
        row.update(asdict(setting), realized_density=density)
        rows.append(row)
        realized = "–" if density is None else f"{density:.3f}"
        log(f"{setting.name}: accuracy {row['accuracy']:.3f}, PSNR vs stock {row['psnr_vs_stock']:.1f} dB, "
            f"realized density {realized}")  # fmt: skip
        return density

    for setting in options.grid():
        run_row(setting)
    for setting in options.coverage_grid():  # calibrated, then uniform at the same realized density
        density = run_row(setting)
        if density is not None:
            run_row(replace(setting, density=round(density, 4), coverage=None, matched=setting.coverage))
    return {"model": "shapes-t2v (t2v)", "media": "video", "options": asdict(options), "device": str(device),
            "rows": rows, "torch": torch.__version__}  # fmt: skip

"""Training data of the shapes text-to-image/video model: a pixel stream (VAE phase) and latent banks (DiT phase).

The VAE learns from an endless seeded stream of rendered images and clips. The DiT learns from *latent banks*:
seeded scenes rendered once by a process pool (started before CUDA, so it renders while the VAE trains), encoded
once by the trained VAE, normalized with the bank's own per-channel statistics and kept on the GPU with their
captions' token ids. This takes the VAE encoder (36 ms per 256 images on an H200) and the data loader out of every
DiT step.

Captions are embedded exactly as `WanPipeline.__call__` embeds prompts (`_get_t5_prompt_embeds` at its default
`max_sequence_length=512`: encoder outputs past each prompt's tokens are zeros), but the encoder runs on the
captions' own tokens only; pads are masked out of its attention, so their number does not change the result.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unbottle.shapes import caption, render_image, render_video, sample_scene
from unbottle.shapes.world import KINDS

SIZE, FRAMES = 128, 17
TEXT_LENGTH = 512  # WanPipeline.__call__'s max_sequence_length: train on the padding the pipeline feeds at inference


def scene_frames(scene, video: bool, frames: int = FRAMES) -> np.ndarray:
    """A scene as (F, H, W, 3) uint8: its `frames`-frame clip, or its still image as one frame."""
    return render_video(scene, SIZE, frames) if video else render_image(scene, SIZE)[None]


class ShapesStream(torch.utils.data.IterableDataset):
    """Endless (pixels (3, F, H, W) in [-1, 1], caption) pairs from the seeded generator; video with prob `video`."""

    def __init__(self, seed: int, video: float, frames: int = FRAMES) -> None:
        self.seed, self.video, self.frames = seed, video, frames

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            is_video = rng.random() < self.video
            scene = sample_scene(rng, video=is_video)
            frames = torch.from_numpy(scene_frames(scene, is_video, self.frames))  # (F, H, W, 3) uint8
            pixels = frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, F, H, W)
            yield pixels, caption(scene, rng)


def batches(seed: int, video: bool, batch: int, workers: int, frames: int = FRAMES) -> Iterator:
    """Batches of one kind (all images or all `frames`-frame videos), so frame counts match within a batch."""
    stream = ShapesStream(seed, 1.0 if video else 0.0, frames)
    return iter(torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers,
                                            persistent_workers=workers > 0))  # fmt: skip


def render_chunk(job: tuple) -> tuple[np.ndarray, list[str]]:
    """Chunk `index` of a bank: `count` seeded scenes as (count, F, H, W, 3) uint8 (clips of `frames` frames) and
    their captions; image scenes drawn with `kind_weights` over `KINDS` when the job has them (uniform otherwise)."""
    seed, index, count, video, frames, kind_weights = job
    rng = random.Random(seed * 1_000_003 + index)
    pixels, captions = [], []
    for _ in range(count):
        kind = rng.choices(KINDS, weights=kind_weights)[0] if kind_weights and not video else None
        scene = sample_scene(rng, kind, video=video)
        pixels.append(scene_frames(scene, video, frames))
        captions.append(caption(scene, rng))
    return np.stack(pixels), captions


def render_jobs(
    seed: int, count: int, video: bool, chunk: int, kind_weights: tuple[float, ...] | None = None,
    frames: int = FRAMES,
) -> list[tuple]:  # fmt: skip
    """The `render_chunk` jobs of a bank of `count` items (the same chunks, hence scenes, on every machine); clips
    have `frames` frames (4k + 1, the VAE's temporal factor)."""
    if video and (frames < 1 or (frames - 1) % 4):
        raise ValueError(f"frames={frames}: clips need 4k + 1 frames (5, 9, ..., 17, 33)")
    weights = tuple(kind_weights) if kind_weights else None
    return [(seed, i, min(chunk, count - i * chunk), video, frames, weights) for i in range(math.ceil(count / chunk))]


def parse_kind_weights(text: str | None) -> tuple[float, ...] | None:
    """Parse `--kind-weights`: "pair:3,relation:4" → weights over `KINDS` (unnamed kinds weigh 1); "" → None."""
    if not text:
        return None
    weights = dict.fromkeys(KINDS, 1.0)
    for item in text.split(","):
        name, _, value = item.partition(":")
        if name.strip() not in weights or not value:
            raise ValueError(f"--kind-weights item {item!r}: expected KIND:WEIGHT with KIND in {', '.join(KINDS)}")
        weights[name.strip()] = float(value)
    if min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"--kind-weights {text!r}: weights must be ≥ 0 and not all 0")
    return tuple(weights[k] for k in KINDS)


def compact_length(ids: torch.Tensor, multiple: int = 8) -> int:
    """Text positions for `CompactTextAttnProcessor`: more than the longest caption (the last row is padding),
    rounded up to `multiple`."""
    return multiple * math.ceil((ids.shape[1] + 1) / multiple)


def tokenize(tokenizer, captions: list[str], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask (B, L) as `WanPipeline` tokenizes prompts; L = `length`, or the longest caption's."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    padding = {"padding": "max_length", "max_length": length} if length else {"padding": "longest"}
    tokens = tokenizer([prompt_clean(c) for c in captions], **padding, truncation=True, add_special_tokens=True,
                       return_attention_mask=True, return_tensors="pt")  # fmt: skip
    return tokens.input_ids, tokens.attention_mask


def encode_text(text_encoder, ids: torch.Tensor, mask: torch.Tensor, length: int = TEXT_LENGTH) -> torch.Tensor:
    """Prompt embeddings (B, `length`, D) equal to `WanPipeline._get_t5_prompt_embeds(max_sequence_length=length)`."""
    return encode_text_states(text_encoder, ids, mask, length)[0]


def encode_text_states(
    text_encoder, ids: torch.Tensor, mask: torch.Tensor, length: int = TEXT_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`encode_text`'s embeddings (B, `length`, D) and the encoder's token states (B, L, D) they are made of."""
    hidden = text_encoder(ids, mask).last_hidden_state  # (B, L, D)
    return F.pad(hidden * mask[..., None], (0, 0, 0, length - hidden.shape[1])), hidden  # zeros past each prompt


@dataclass
class LatentBank:
    """Normalized VAE latents (N, C, F, h, w) fp16 with their captions' token ids and masks (N, L), on one device,
    the empty caption's ids and mask (1, L) at the same length (classifier-free-guidance dropout), and optionally
    per-token caption labels (N, fields, L) int8 (`caption_labels.py`)."""

    latents: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    empty_ids: torch.Tensor
    empty_mask: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`n` random items (with replacement): latents as fp32, ids, mask."""
        return self.sample_with_labels(n, gen)[:3]

    def sample_with_labels(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """`sample`'s items and their labels (None without labels); the same draw as `sample` for a generator."""
        idx = torch.randint(len(self), (n,), device=self.latents.device, generator=gen)
        labels = self.labels[idx] if self.labels is not None else None
        return self.latents[idx].float(), self.ids[idx], self.mask[idx], labels

    def drop_captions(self, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`ids`, `mask` (B, L) with the rows where `drop` (B,) is true replaced by the empty caption."""
        return torch.where(drop[:, None], self.empty_ids, ids), torch.where(drop[:, None], self.empty_mask, mask)


@torch.no_grad()
def encode_bank(
    vae, chunks: Iterator[tuple[np.ndarray, list[str]]], device: torch.device, batch: int,
    log: Callable[[str], None], name: str, size: int | None = None,
) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """Encode rendered chunks with the VAE (posterior mode, bf16 autocast on CUDA): raw latents fp16 and captions;
    images are first resized to `size` px (antialiased bilinear) when given."""
    latents, captions, start = [], [], time.time()
    for frames, texts in chunks:
        pixels = torch.from_numpy(frames).to(device).permute(0, 4, 1, 2, 3)  # (n, 3, F, H, W) uint8
        for part in pixels.split(batch):
            x = part.float() / 127.5 - 1.0  # (n, 3, F, H, W)
            if size is not None and size != x.shape[-1]:
                n, c, f = x.shape[:3]
                x = F.interpolate(x.transpose(1, 2).flatten(0, 1), size=(size, size), mode="bilinear",
                                  antialias=True).unflatten(0, (n, f)).transpose(1, 2)  # fmt: skip
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = vae.encode(x).latent_dist.mode()
            latents.append(z.to(torch.float16))
        captions += texts
    log(f"{name} bank: {len(captions)} items encoded in {time.time() - start:.0f} s (rendering overlapped)")
    return torch.cat(latents), captions


def latent_statistics(latents: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of raw latents (N, C, F, h, w), accumulated in fp64."""
    total = torch.zeros(latents.shape[1], dtype=torch.float64, device=latents.device)
    squares, count = total.clone(), 0
    for part in latents.split(4096):
        z = part.double().transpose(0, 1).flatten(1)  # (C, n·F·h·w)
        total += z.sum(1)
        squares += (z * z).sum(1)
        count += z.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-6).sqrt()
    return mean.tolist(), std.clamp_min(1e-3).tolist()


def make_bank(
    latents: torch.Tensor, captions: list[str], tokenizer, mean: list[float], std: list[float],
    labels: Callable[[list[str], int], torch.Tensor] | None = None,
) -> LatentBank:  # fmt: skip
    """Normalize raw latents in place with (mean, std), as the pipeline un-normalizes them, and tokenize captions
    (and label their tokens with `labels(captions, length)` when given)."""
    view = (1, -1) + (1,) * (latents.dim() - 2)
    mean_t = torch.tensor(mean, device=latents.device).view(view)
    std_t = torch.tensor(std, device=latents.device).view(view)
    for part in latents.split(4096):
        part.copy_(((part.float() - mean_t) / std_t).to(part.dtype))
    ids, mask = tokenize(tokenizer, captions)
    empty_ids, empty_mask = tokenize(tokenizer, [""], ids.shape[1])
    token_labels = labels(captions, ids.shape[1]).to(latents.device) if labels is not None else None
    return LatentBank(*(t.to(latents.device) for t in (latents, ids, mask, empty_ids, empty_mask)), token_labels)

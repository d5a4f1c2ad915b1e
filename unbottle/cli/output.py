"""Output paths and writers: PNG/JPEG/WebP images, MP4 videos (diffusers' `export_to_video`), text files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import RunError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4",)


def prepare_output(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check `path` before any work is done: right suffix, parent folder created, and the file writable."""
    out = Path(path).expanduser()
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise UsageError(f"-o/--output: {str(out)!r} must end in one of {', '.join(suffixes)}")
    if out.is_dir():
        raise UsageError(f"-o/--output: {str(out)!r} is a folder; give a file name inside it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"-o/--output: cannot create the folder {str(out.parent)!r}: {e.strerror or e}") from e
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as e:
        raise RunError(f"-o/--output: cannot write {str(out)!r}: {e.strerror or e}") from e
    if not existed:
        out.unlink()
    return out


def to_uint8_frames(frames: object) -> list[np.ndarray]:
    """Frames as a list of (H, W, 3) uint8 arrays, from PIL images, float arrays in [0, 1] or a (F, H, W, 3) array."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    result = []
    for frame in frames:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        result.append(arr)
    return result


def save_image(image: object, path: Path) -> Path:
    """Write one image (PIL or array) to `path`; the format follows the suffix."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(to_uint8_frames(image)[0])
    image.save(path)
    return path


def save_video(frames: object, path: Path, fps: int) -> Path:
    """Write frames to an MP4 at `fps` with diffusers' `export_to_video` (imageio-ffmpeg)."""
    from diffusers.utils import export_to_video

    export_to_video([Image.fromarray(f) for f in to_uint8_frames(frames)], str(path), fps=fps)
    return path

"""Output paths and writers: PNG/JPEG/WebP images, MP4 videos (diffusers' `export_to_video`), text files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import RunError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4",)


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """`folder` and those of its ancestors that do not exist yet, deepest first: what `mkdir(parents=True)` makes."""
    missing, folder = [], Path(folder)
    while folder != folder.parent:
        try:
            if folder.exists() or folder.is_symlink():
                break
        except OSError:  # not even visible: mkdir will say why
            break
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first) that is still an empty folder; anything else stays."""
    for folder in folders:
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            continue


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` with its parents; returns the folders made, deepest first; RunError (none left) if it fails."""
    missing = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty_folders(missing)
        raise RunError(f"-o/--output: cannot create the folder {str(folder)!r}: {e.strerror or e}") from e
    return missing


def _check_spelling(path: str | os.PathLike, what: str) -> str:
    text = os.fspath(path)
    if not text:
        raise UsageError(f"-o/--output must not be empty; give {what}")
    return text


def prepare_output(
    path: str | os.PathLike, suffixes: tuple[str, ...] | None = None, created: list[Path] | None = None
) -> Path:
    """Check `path` before any work is done: a file name with the right suffix, parent folder created, and the file
    writable. The folders created are appended to `created`, for `remove_empty_folders` if the run then fails."""
    example = "unbottle" + (suffixes[0] if suffixes else ".txt")
    text = _check_spelling(path, f"a file name, e.g. {example}")
    if os.path.basename(text) in ("", ".", ".."):  # "out/", "out/.": a folder, though Path() would drop the "/"
        raise UsageError(
            f"-o/--output: {text!r} names a folder (it ends in {os.path.basename(text) or text[-1]!r}); give a file "
            f"name, e.g. {os.path.join(text, example)!r}"
        )
    out = Path(text).expanduser()
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise UsageError(f"-o/--output: {str(out)!r} must end in one of {', '.join(suffixes)}")
    if out.is_dir():
        raise UsageError(f"-o/--output: {str(out)!r} is a folder; give a file name inside it")
    made = _make_folder(out.parent)
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as e:
        remove_empty_folders(made)
        raise RunError(f"-o/--output: cannot write {str(out)!r}: {e.strerror or e}") from e
    if not existed:
        out.unlink()
    if created is not None:
        created.extend(made)
    return out


def prepare_output_folder(path: str | os.PathLike, created: list[Path] | None = None) -> Path:
    """Check an output folder before any work is done: not a file, created with its parents, and writable. The
    folders created are appended to `created`, for `remove_empty_folders` if the run then fails."""
    out = Path(_check_spelling(path, "a folder")).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o/--output: {str(out)!r} is a file; give a folder (it is created if missing)")
    made = _make_folder(out)
    probe = out / f".unbottle-write-probe.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        remove_empty_folders(made)
        raise RunError(f"-o/--output: cannot write to the folder {str(out)!r}: {e.strerror or e}") from e
    if created is not None:
        created.extend(made)
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


def load_image(path: Path) -> Image.Image:
    """An input image (`--image`), as RGB; a file PIL cannot read is the user's error, named."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"--image: cannot read {str(path)!r} as an image ({type(e).__name__})") from None


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

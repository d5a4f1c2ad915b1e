"""The generation verbs: image, video and text, on a loaded pipeline, with the model's size rules checked first."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UsageError
from .output import load_image, save_image, save_video


def call_parameters(pipe: object) -> set[str]:
    """Names of the keyword arguments the pipeline's `__call__` accepts."""
    return set(inspect.signature(pipe.__call__).parameters)


def is_video_pipeline(pipe: object) -> bool:
    """True for pipelines that generate frames (their call takes `num_frames`)."""
    return "num_frames" in call_parameters(pipe)


def spatial_multiple(pipe: object) -> int:
    """The number height and width must be multiples of: VAE downsampling × patch size (× 2 for Flux's packing)."""
    vae = 1
    for attr in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_scale_factor"):
        if isinstance(getattr(pipe, attr, None), int):
            vae = getattr(pipe, attr)
            break
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    patch = getattr(getattr(denoiser, "config", None), "patch_size", None) or 1
    if isinstance(patch, (tuple, list)):
        patch = patch[-1]
    from ..families import family_for_model

    family = family_for_model(denoiser, None, required=False)  # the latent packing of its family (Flux: 2 × 2)
    packing = family.latents.packing if family is not None and family.latents is not None else 1
    return int(vae) * int(patch) * packing


def temporal_multiple(pipe: object) -> int:
    """Frames must be k·n + 1 for the VAE's temporal compression k (1 when the model has none)."""
    for attr in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio"):
        if isinstance(getattr(pipe, attr, None), int):
            return getattr(pipe, attr)
    return 1


def check_size(pipe: object, height: int | None, width: int | None, frames: int | None = None) -> None:
    """Raise a UsageError naming the argument when a size breaks the model's divisibility rules."""
    multiple = spatial_multiple(pipe)
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and value % multiple:
            raise UsageError(
                f"{name} {value} is not a multiple of {multiple}, which {type(pipe).__name__} requires "
                f"(VAE downsampling × patch size); try {max(multiple, value // multiple * multiple)}"
            )
    k = temporal_multiple(pipe)
    if frames is not None and (frames - 1) % k:
        raise UsageError(
            f"--frames {frames} does not fit {type(pipe).__name__}'s temporal compression {k}: use {k}·n + 1 frames, "
            f"e.g. {(frames - 1) // k * k + 1}"
        )


def _call_kwargs(pipe: object, prompt: str, *, steps: int | None, seed: int, height: int | None, width: int | None,
                 guidance_scale: float | None, negative_prompt: str | None) -> dict:  # fmt: skip
    params = call_parameters(pipe)
    kwargs = {"prompt": prompt, "generator": torch.Generator().manual_seed(seed)}
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if height is not None:
        kwargs["height"] = height
    if width is not None:
        kwargs["width"] = width
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if negative_prompt is not None:
        if "negative_prompt" not in params:
            raise UsageError(f"--negative-prompt: {type(pipe).__name__} takes no negative prompt")
        kwargs["negative_prompt"] = negative_prompt
    return kwargs


def generate_image(pipe: object, prompt: str, output: Path | None, *, steps: int | None = None, seed: int = 0,
                   height: int | None = None, width: int | None = None, guidance_scale: float | None = None,
                   negative_prompt: str | None = None, runner: Callable | None = None) -> Path | None:  # fmt: skip
    """Generate one image with an image pipeline, or the first frame of a 1-frame video pipeline; write it (not
    when `output` is None: a `--parallel` rank other than 0).

    `runner` generates in the pipeline's place with its call signature (a BottleneckSampler)."""
    check_size(pipe, height, width, 1 if is_video_pipeline(pipe) else None)
    kwargs = _call_kwargs(pipe, prompt, steps=steps, seed=seed, height=height, width=width,
                          guidance_scale=guidance_scale, negative_prompt=negative_prompt)  # fmt: skip
    run = runner or pipe
    if is_video_pipeline(pipe):
        image = run(num_frames=1, output_type="np", **kwargs).frames[0][0]  # (H, W, 3) of (B, F, H, W, 3)
    else:
        image = run(output_type="pil", **kwargs).images[0]
    return save_image(image, output) if output is not None else None


def generate_video(pipe: object, prompt: str, output: Path | None, *, frames: int | None = None, fps: int = 8,
                   steps: int | None = None, seed: int = 0, height: int | None = None, width: int | None = None,
                   guidance_scale: float | None = None, negative_prompt: str | None = None,
                   runner: Callable | None = None, image: Path | None = None) -> Path | None:  # fmt: skip
    """Generate a video with a video pipeline (or `runner` in its place), from a first-frame `image` for an
    image-to-video pipeline, and write it as MP4 (not when `output` is None: a `--parallel` rank other than 0)."""
    if not is_video_pipeline(pipe):
        raise UsageError(f"--model: {type(pipe).__name__} makes images, not videos; use `unbottle image`")
    check_size(pipe, height, width, frames)
    kwargs = _call_kwargs(pipe, prompt, steps=steps, seed=seed, height=height, width=width,
                          guidance_scale=guidance_scale, negative_prompt=negative_prompt)  # fmt: skip
    if frames is not None:
        kwargs["num_frames"] = frames
    parameter = inspect.signature(type(pipe).__call__).parameters.get("image")
    if image is not None:
        if parameter is None:
            raise UsageError(f"--image: {type(pipe).__name__} is not an image-to-video pipeline; it takes no image")
        kwargs["image"] = load_image(image)
    elif parameter is not None and parameter.default is inspect.Parameter.empty:
        raise UsageError(f"--image: {type(pipe).__name__} is image-to-video; give its first frame with --image FILE")
    video = (runner or pipe)(output_type="np", **kwargs).frames[0]  # (F, H, W, 3) in [0, 1]
    return save_video(video, output, fps=fps) if output is not None else None


def dlm_block_length(gen_length: int, steps: int, largest: int = 32) -> int:
    """The semi-autoregressive block for `unbottle text` on a DiffusionLMPipeline: the largest divisor of gen_length
    up to `largest` (LLaDA's 32) whose block count divides steps; one block of gen_length when none does."""
    for block in range(min(largest, gen_length), 0, -1):
        if gen_length % block == 0 and steps % (gen_length // block) == 0:
            return block
    return gen_length


def _generate_dlm_text(pipe: object, prompt: str, gen_length: int, steps: int | None, seed: int) -> str:
    """LLaDA-style masked diffusion (unbottle.DiffusionLMPipeline): greedy, low-confidence remasking, steps =
    gen_length unless given (LLaDA's best setting), blocks of up to 32 tokens."""
    steps = gen_length if steps is None else steps
    block = dlm_block_length(gen_length, steps)
    try:
        out = pipe(prompt, gen_length=gen_length, steps=steps, block_length=block,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    except ValueError as e:
        raise UsageError(f"--model: {e}") from e
    return out.texts[0]


def _max_positions(pipe: object) -> int | None:
    """The positions the pipeline's language model takes (its config's `max_position_embeddings`), if it says."""
    config = getattr(getattr(pipe, "model", None), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def check_gen_length(pipe: object, prompt: str, gen_length: int) -> None:
    """Raise a UsageError naming --gen-length when the prompt's tokens plus `gen_length` exceed the model's length."""
    limit = _max_positions(pipe)
    if limit is None:
        return
    tokenizer = getattr(pipe, "tokenizer", None)
    try:
        prompt_tokens = len(tokenizer(prompt)["input_ids"]) if tokenizer is not None else 0
    except (TypeError, KeyError, ValueError):  # a tokenizer of another kind: the generated tokens alone
        prompt_tokens = 0
    if prompt_tokens + gen_length > limit:
        model = type(getattr(pipe, "model", pipe)).__name__
        counted = f"the prompt's {prompt_tokens} tokens + " if prompt_tokens else ""
        raise UsageError(
            f"--gen-length {gen_length}: {counted}{gen_length} generated exceed the {limit} positions of {model}; "
            f"use --gen-length ≤ {max(limit - prompt_tokens, 0)}"
        )


def generate_text(pipe: object, prompt: str, *, gen_length: int | None = None, steps: int | None = None,
                  seed: int = 0, **extra: object) -> str:  # fmt: skip
    """Generate text with a diffusers text-diffusion pipeline (DiffusionGemmaPipeline, LLaDA2Pipeline) or a
    transformers masked LM in unbottle.DiffusionLMPipeline.

    `extra` are further call arguments (the embedded default's decoding settings)."""
    from ..pipelines.diffusion_lm import DiffusionLMPipeline

    if isinstance(pipe, DiffusionLMPipeline):
        gen_length = gen_length if gen_length is not None else 16
        check_gen_length(pipe, prompt, gen_length)
        return _generate_dlm_text(pipe, prompt, gen_length, steps, seed)
    params = call_parameters(pipe)
    if "gen_length" not in params:
        raise UsageError(f"--model: {type(pipe).__name__} is not a text-diffusion pipeline; use `unbottle image`")
    if gen_length is not None:
        check_gen_length(pipe, prompt, gen_length)
    kwargs = {"prompt": prompt, "generator": torch.Generator().manual_seed(seed), "output_type": "text", **extra}
    if gen_length is not None:
        kwargs["gen_length"] = gen_length
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    return pipe(**kwargs).texts[0]

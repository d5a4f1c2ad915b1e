"""Encode the prompt once with the pipeline's own `encode_prompt`, as its stock `__call__` would.

The result maps the `__call__` keywords that carry the encoding (`prompt_embeds=`, `pooled_prompt_embeds=`, ...) to
their tensors, so a feature can run the stock pipeline several times on one encoding. `encode_prompt` gets the
caller's arguments, else the `__call__` defaults (which may differ from `encode_prompt`'s own: Wan 512 vs 226 text
tokens); `always_negative` decides whether the negatives are encoded for any call (a cache: noise search) or only
when the call would use them (CFG with guidance_scale > 1, true CFG with true_cfg_scale > 1 and a negative).
"""

from __future__ import annotations

import inspect
import re

import torch

from .family import PromptEncoding

# the pipelines' own keywords for the number of samples per prompt
PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")
_TEXT = re.compile(r"(negative_)?prompt(_\d+)?")
# the `__call__` keywords whose `scale` is the LoRA scale (UNet pipelines; SD3, Flux; video pipelines)
_LORA = ("cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs")


def encode_parameters(pipe: object) -> dict[str, inspect.Parameter]:
    """`encode_prompt`'s parameters, from the class (an instance-level wrapper may show only *args, **kwargs)."""
    params = dict(inspect.signature(type(pipe).encode_prompt).parameters)
    params.pop("self", None)
    return params


def text_keywords(pipe: object) -> set[str]:
    """`__call__` keywords carrying prompt text (prompt, prompt_2, negative_…): replaced by the cached encoding."""
    return {k for k in inspect.signature(type(pipe).__call__).parameters if _TEXT.fullmatch(k)}


def encoded_keywords(pipe: object) -> set[str]:
    """`__call__` keywords an encoding replaces: prompts, their embeddings (and negatives), and the per-prompt count
    where `encode_prompt` repeats by it (else the call repeats the encoding itself: Z-Image)."""
    keep = {"device", "dtype", "do_classifier_free_guidance", "lora_scale", "max_sequence_length", "clip_skip",
            "prompt_template"}  # fmt: skip
    names = set(encode_parameters(pipe)) - keep
    return names | {f"negative_{n}" for n in names}


def _arguments(pipe: object, kwargs: dict, params: dict, call: dict, guided: bool) -> dict:
    """`encode_prompt` arguments as the stock `__call__` passes them, from the call's keywords `kwargs`."""
    args: dict = {}
    for name, parameter in params.items():
        if name == "device":
            args[name] = pipe._execution_device
        elif name == "do_classifier_free_guidance":
            args[name] = guided
        elif name == "lora_scale":
            args[name] = next((kwargs[k] for k in _LORA if kwargs.get(k)), {}).get("scale")
        elif name in kwargs:
            args[name] = kwargs[name]
        elif name in call and call[name].default is not inspect.Parameter.empty:
            args[name] = call[name].default
        elif parameter.default is inspect.Parameter.empty:
            args[name] = None  # required but not given (SD3's prompt_2/prompt_3): the stock `__call__` passes None
    return args


def _call_default(call: dict, name: str) -> object:
    return call[name].default if name in call else None


def _prompt_count(kwargs: dict) -> int:
    """The number of prompts of a call: its prompt list's length, else its `prompt_embeds`' batch, else 1."""
    prompt, embeds = kwargs.get("prompt"), kwargs.get("prompt_embeds")
    if isinstance(prompt, list):
        return len(prompt)
    return int(embeds.shape[0]) if prompt is None and isinstance(embeds, torch.Tensor) else 1


def _guider_cfg(pipe: object) -> bool:
    """Whether the pipeline's diffusers guider (HunyuanVideo-1.5) runs an unconditional branch, as it checks."""
    guider = getattr(pipe, "guider", None)
    return guider is not None and bool(getattr(guider, "_enabled", False)) and guider.num_conditions > 1


@torch.no_grad()
def encode_prompt_once(
    pipe: object, encoding: PromptEncoding, kwargs: dict, *, always_negative: bool
) -> dict[str, torch.Tensor]:
    """The prompt of the call keywords `kwargs` encoded once by the pipeline's own `encode_prompt`: `__call__`
    keyword → tensor (None results left out)."""
    params = encode_parameters(pipe)
    call = inspect.signature(type(pipe).__call__).parameters
    if "batch_size" in params and "batch_size" not in kwargs:  # the prompt count, as the stock `__call__` passes it
        kwargs = dict(kwargs, batch_size=_prompt_count(kwargs))
    guided = always_negative or (
        "do_classifier_free_guidance" in params
        and kwargs.get("guidance_scale", _call_default(call, "guidance_scale")) > 1
    )
    out = dict(zip(encoding.encoded, pipe.encode_prompt(**_arguments(pipe, kwargs, params, call, guided)),
                   strict=True))  # fmt: skip
    given = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
    if encoding.separate_negative and given:  # true CFG: the negatives through a second `encode_prompt` call
        cfg = "true_cfg_scale" if "true_cfg_scale" in call else "guidance_scale"  # Kandinsky 5: CFG on guidance_scale
        scale = kwargs.get(cfg, _call_default(call, cfg))
        if always_negative or (scale is not None and scale > 1) or _guider_cfg(pipe):
            # the negative call: each `negative_x` keyword in place of `x`, the other settings as for the prompt
            negative = {k: v for k, v in kwargs.items() if not k.startswith("negative_")}
            negative = {k: v for k, v in negative.items() if f"negative_{k}" not in call}
            negative |= {k.removeprefix("negative_"): v for k, v in kwargs.items() if k.startswith("negative_")}
            encoded = pipe.encode_prompt(**_arguments(pipe, negative, params, call, guided))
            out.update({f"negative_{k}": v for k, v in zip(encoding.encoded, encoded, strict=True) if k is not None})
    out.pop(None, None)
    return {k: v for k, v in out.items() if v is not None}

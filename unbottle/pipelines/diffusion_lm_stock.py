"""The diffusion-LM step hooks for sparse attention (SparseD), and diffusers' stock DLM pipelines run with them.

SparseD (Wang et al. 2025) attends densely for the first steps of a generation, then reuses per-head patterns for the
rest, so the attention needs to know which step the next forward belongs to and when a generation starts. The hooks
live in `unbottle.attention_processors` (`notify_dlm_generation_start`, `notify_dlm_step`) and do nothing on a model
without sparse attention:

    notify_dlm_generation_start(model, prompt_length=P, gen_length=G, attention_mask=mask, total_steps=T)  # once
    notify_dlm_step(model, step=i, total_steps=T)                                                # before forward i

`run_stock_dlm_pipeline` drives diffusers' own `LLaDA2Pipeline` or `DiffusionGemmaPipeline` (both in diffusers
0.42.1) with these hooks: the start and step 0 before the call, then step i + 1 from the pipeline's
`callback_on_step_end` after its step i (chained with the caller's callback, if any). T is the pipeline's planned step
count (its `num_timesteps`); the pipelines can stop early (blocks that fill up, EOS) and LLaDA2's editing refines
past it, so fewer steps may run, and with editing the last notified step repeats for the extra forwards.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from ..attention_processors import notify_dlm_generation_start, notify_dlm_step

STOCK_PIPELINES = ("LLaDA2Pipeline", "DiffusionGemmaPipeline")


def _defaults(pipe: object) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(type(pipe).__call__).parameters.items()}


def _arg(kwargs: dict[str, Any], defaults: dict[str, Any], name: str) -> Any:
    return kwargs[name] if name in kwargs else defaults.get(name)


def _llada2_plan(pipe: Any, prompt: Any, kwargs: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    """LLaDA2Pipeline: (prompt mask (B, P), gen_length, planned steps), from the pipeline's own prompt encoding."""
    defaults = _defaults(pipe)
    _, mask = pipe._prepare_input_ids(
        prompt=prompt, messages=kwargs.get("messages"), input_ids=kwargs.get("input_ids"),
        attention_mask=kwargs.get("attention_mask"), use_chat_template=_arg(kwargs, defaults, "use_chat_template"),
        add_generation_prompt=_arg(kwargs, defaults, "add_generation_prompt"), chat_template_kwargs=None,
    )  # fmt: skip
    mask = mask if mask.ndim == 2 else mask[None]  # (B, P)
    gen_length = int(_arg(kwargs, defaults, "gen_length"))
    block = kwargs.get("block_length") or pipe.scheduler.config.block_length
    steps = min(int(_arg(kwargs, defaults, "num_inference_steps")),
                gen_length // int(_arg(kwargs, defaults, "minimal_topk")))  # fmt: skip
    prompt_length = mask.shape[1]
    blocks = math.ceil((prompt_length + gen_length) / block) - prompt_length // block  # blocks holding answer tokens
    return mask, gen_length, steps * max(blocks, 0)


def _diffusion_gemma_plan(pipe: Any, prompt: Any, kwargs: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    """DiffusionGemmaPipeline: (prompt mask (B, P), gen_length, planned steps = predictor steps × canvases)."""
    defaults = _defaults(pipe)
    _, mask, _ = pipe._prepare_inputs(
        prompt=prompt, messages=kwargs.get("messages"), image=kwargs.get("image"),
        add_generation_prompt=_arg(kwargs, defaults, "add_generation_prompt"),
    )  # fmt: skip
    gen_length = int(_arg(kwargs, defaults, "gen_length"))
    steps = int(_arg(kwargs, defaults, "num_inference_steps"))
    corrector = getattr(pipe.scheduler.config, "corrector_steps", 0) or 0
    if corrector > 0:  # corrector sweeps are folded into the step budget (the pipeline's own split)
        steps -= (steps - 1) // (1 + corrector) * corrector
    canvases = math.ceil(gen_length / pipe.model.config.canvas_length)
    return mask, gen_length, steps * canvases


def _chain(callback: Any, after: Callable[[int], None]) -> Callable[[Any, int, int, dict], dict]:
    def on_step_end(pipeline: Any, step: int, timestep: int, callback_kwargs: dict) -> dict:
        out = callback(pipeline, step, timestep, callback_kwargs) if callback is not None else callback_kwargs
        after(step)
        return out if out is not None else {}

    return on_step_end


def run_stock_dlm_pipeline(pipe: Any, prompt: str | list[str] | None = None, **kwargs: Any) -> Any:
    """Run a stock diffusers LLaDA2Pipeline / DiffusionGemmaPipeline with SparseD's step hooks notified; its output.

    Same arguments and output as `pipe(prompt, **kwargs)`. Enable sparse attention on the pipeline first
    (`unbottle.enable_sparse_attention(pipe, config)`); without it the notifications do nothing.
    """
    name = type(pipe).__name__
    if name not in STOCK_PIPELINES:
        raise TypeError(f"run_stock_dlm_pipeline supports {', '.join(STOCK_PIPELINES)}; got {name}")
    plan = _llada2_plan if name == "LLaDA2Pipeline" else _diffusion_gemma_plan
    prompt_mask, gen_length, total = plan(pipe, prompt, kwargs)  # prompt_mask: (B, P)
    model = pipe.model
    ones = torch.ones(prompt_mask.shape[0], gen_length, dtype=prompt_mask.dtype)
    mask = torch.cat([prompt_mask.long(), ones.long()], 1).to(pipe._execution_device)  # (B, P + G)
    notify_dlm_generation_start(model, prompt_length=prompt_mask.shape[1], gen_length=gen_length, attention_mask=mask,
                                total_steps=total)  # fmt: skip

    def next_step(step: int) -> None:
        if step + 1 < total:
            notify_dlm_step(model, step=step + 1, total_steps=total)

    callback = kwargs.pop("callback_on_step_end", None)
    if callback is not None and hasattr(callback, "tensor_inputs"):  # a PipelineCallback: its inputs, explicitly
        kwargs["callback_on_step_end_tensor_inputs"] = list(callback.tensor_inputs)
    notify_dlm_step(model, step=0, total_steps=total)
    return pipe(prompt=prompt, callback_on_step_end=_chain(callback, next_step), **kwargs)

"""`DiffusionLMPipeline`: masked-diffusion text generation (LLaDA, Nie et al. 2025) for any transformers masked LM.

The answer is `gen_length` mask tokens after the prompt, decoded in `gen_length / block_length` semi-autoregressive
blocks of `steps / num_blocks` steps each. Every step runs the model on the whole sequence (prompt + answer; no KV
cache, as in LLaDA), predicts x0 at the current block's masked positions and commits the k most confident of them
(`remasking="low_confidence"`) or k random ones (`"random"`); k follows the linear schedule (`remasking.py`).
Positions outside the current block are never committed (LLaDA's −inf confidence), so only the block's logits are
needed: models whose forward takes `logits_to_keep` compute just those. With `cfg_scale` > 0 an unconditional copy
with the prompt replaced by mask tokens runs in the same forward, and logits = u + (cfg + 1)(c − u).

Batches: prompts of different lengths are left-padded with the pad token; the model gets a 2-D attention mask
(padding keys masked out) and `position_ids` that start at 0 at each row's first real token, so a batch of rows
decodes as the rows one at a time (models whose forward takes no `position_ids`, like LLaDA's remote code, see padded
rows at shifted positions, as in LLaDA's own batch generate). Randomness (temperature > 0, random remasking) is drawn
per row from the row's own generator: pass `generator=[g0, g1, ...]`, one per prompt, and row b reproduces a batch-1
run with a generator seeded like `g_b`; a single generator first draws one seed per row (row 0 then matches a batch-1
run with the same generator).

Sparse attention (SparseD, Wang et al. 2025): when `unbottle.attention_processors` provides them, each generation
calls `notify_dlm_generation_start(model, prompt_length=P, gen_length=G, attention_mask=mask, total_steps=steps)`
(P: the padded prompt length, where the answer starts; mask: (B', P + G) long, 0 on padding, B' = 2B with CFG;
total_steps only where the function takes it), then `notify_dlm_step(model, step=i, total_steps=steps)` before the
forward of every global step i = 0 .. steps − 1 (a step that commits no token, when a block has more steps than
tokens, is skipped with its forward). Enable it with `unbottle.enable_sparse_attention(pipe, config)`.

Dream (model_type "Dream", e.g. Dream-v0-Instruct-7B) predicts token i + 1 at position i; its logits are shifted
back (`shift_logits`), and its padding mask is passed as a 4-D boolean key mask, which its attention expects.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..attention_processors import notify_dlm_generation_start, notify_dlm_step
from .diffusion_lm_stock import run_stock_dlm_pipeline
from .remasking import REMASKING, confidence, precise_dtype, sample_tokens, select_transfer, transfer_schedule

__all__ = ["DiffusionLMConfig", "DiffusionLMPipeline", "DiffusionLMPipelineOutput", "run_stock_dlm_pipeline"]

CALLBACK_TENSOR_INPUTS = ("x", "x0", "confidence", "transfer_index")


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    return value


def _nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DiffusionLMConfig:
    """LLaDA (Nie et al. 2025) sampling settings: answer length, steps, semi-autoregressive blocks, remasking, CFG."""

    gen_length: int = 128  # answer tokens, a multiple of block_length
    steps: int = 128  # denoising steps in all (one forward each), a multiple of the number of blocks
    block_length: int = 32  # tokens per semi-autoregressive block; = gen_length for a single block
    remasking: str = "low_confidence"  # which masked positions to commit: "low_confidence" or "random"
    temperature: float = 0.0  # Gumbel-max sampling temperature for x0, ≥ 0; 0 = argmax
    cfg_scale: float = 0.0  # classifier-free guidance, ≥ 0; 0 = no unconditional branch

    def __post_init__(self) -> None:
        for name in ("gen_length", "steps", "block_length"):
            _integer(name, getattr(self, name))
        if self.gen_length % self.block_length:
            raise ValueError(
                f"gen_length={self.gen_length} must be a multiple of block_length={self.block_length} "
                f"(e.g. block_length={math.gcd(self.gen_length, self.block_length)})"
            )
        if self.steps % self.num_blocks:
            suggestion = self.num_blocks * max(1, round(self.steps / self.num_blocks))
            raise ValueError(
                f"steps={self.steps} must be a multiple of the number of blocks gen_length / block_length = "
                f"{self.num_blocks} (at least one step per block), e.g. steps={suggestion}"
            )
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(map(repr, REMASKING))}, got {self.remasking!r}")
        _nonnegative("temperature", self.temperature)
        _nonnegative("cfg_scale", self.cfg_scale)

    @property
    def num_blocks(self) -> int:
        """Semi-autoregressive blocks: gen_length / block_length."""
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        """Denoising steps of each block: steps / num_blocks."""
        return self.steps // self.num_blocks

    @property
    def stochastic(self) -> bool:
        """Whether generation draws random numbers (sampling at temperature > 0, or random remasking)."""
        return self.temperature > 0 or self.remasking == "random"


@dataclass
class DiffusionLMPipelineOutput(BaseOutput):
    """Generated answer token ids `(B, gen_length)` and their decoded texts (cut at the first EOS)."""

    sequences: torch.LongTensor
    texts: list[str] | None = None


class DiffusionLMPipeline(DiffusionPipeline):
    """Masked-diffusion generation in the LLaDA style (Nie et al. 2025), with SparseD's step hooks, for a masked LM.

    `model` is a transformers model that returns logits over the whole sequence and attends bidirectionally (LLaDA,
    Dream, a Gemma with `use_bidirectional_attention`, ...); `tokenizer` its tokenizer. The mask token is
    `mask_token_id`, else the tokenizer's, else `model.config.mask_token_id`.
    """

    model: Any
    tokenizer: Any
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)

    def __init__(self, model: Any, tokenizer: Any, mask_token_id: int | None = None,
                 shift_logits: bool | None = None) -> None:  # fmt: skip
        super().__init__()
        self.register_modules(model=model, tokenizer=tokenizer)
        config = getattr(model, "config", None)
        candidates = (
            ("mask_token_id", mask_token_id),
            ("tokenizer.mask_token_id", getattr(tokenizer, "mask_token_id", None)),
            ("model.config.mask_token_id", getattr(config, "mask_token_id", None)),
        )
        found = next(((where, v) for where, v in candidates if v is not None), None)
        if found is None:
            raise ValueError(
                f"mask_token_id: the tokenizer ({type(tokenizer).__name__}) has no mask token and the model config "
                "has no mask_token_id; pass DiffusionLMPipeline(model, tokenizer, mask_token_id=...) (LLaDA-8B: "
                "126336, Dream-7B: 151666)"
            )
        where, value = found
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"mask_token_id must be a token id ≥ 0, got {value!r} (from {where})")
        self.mask_token_id = value
        dream = str(getattr(config, "model_type", "")).lower() == "dream"
        self.shift_logits = dream if shift_logits is None else bool(shift_logits)
        self.key_mask_4d = dream  # Dream's attention takes a (B, 1, L, L) boolean mask, not a 2-D padding mask

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, mask_token_id: int | None = None, trust_remote_code: bool = False,
                        **kwargs: Any) -> DiffusionLMPipeline:  # fmt: skip
        """Load a hub id or local folder (LLaDA, Dream, ...) as a masked-diffusion pipeline (LLaDA, Nie et al. 2025).

        Tries AutoModelForMaskedLM, AutoModelForCausalLM, then AutoModel; `kwargs` go to both from_pretrained calls
        (`dtype=`, `local_files_only=`, `revision=`, ...). Remote code runs only with `trust_remote_code=True`."""
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "torch_dtype", "device_map")}
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **tokenizer_kwargs
        )
        failures = []
        for auto in (AutoModelForMaskedLM, AutoModelForCausalLM, AutoModel):
            try:
                model = auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
                break
            except ValueError as e:  # "Unrecognized configuration class ... for this kind of AutoModel"
                failures.append(f"{auto.__name__}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        else:
            raise ValueError(f"cannot load {name_or_path!r} as a masked LM: {'; '.join(failures)}")
        return cls(model.eval(), tokenizer, mask_token_id=mask_token_id)

    @property
    def _execution_device(self) -> torch.device:
        """The device the model runs on (diffusers' rule; the first parameter's device for plain torch modules)."""
        try:
            return super()._execution_device
        except AttributeError:  # a model without `.device` (a plain torch.nn.Module wrapper)
            return next(self.model.parameters()).device

    # -- inputs -----------------------------------------------------------------------------------------------------
    def _encode(self, prompt: str | list[str] | None, input_ids: torch.Tensor | None,
                attention_mask: torch.Tensor | None, use_chat_template: bool) -> list[list[int]]:  # fmt: skip
        """Each prompt's token ids, unpadded."""
        if (prompt is None) == (input_ids is None):
            raise ValueError("pass exactly one of prompt (text) and input_ids (token ids)")
        if input_ids is not None:
            ids = input_ids[None] if input_ids.ndim == 1 else input_ids  # (B, P)
            if ids.ndim != 2 or ids.dtype != torch.long:
                raise ValueError(f"input_ids must be a (B, P) int64 tensor, got {tuple(ids.shape)} {ids.dtype}")
            keep = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            if keep.shape != ids.shape:
                raise ValueError(f"attention_mask shape {tuple(keep.shape)} must match input_ids {tuple(ids.shape)}")
            rows = [row[k].tolist() for row, k in zip(ids, keep.reshape(ids.shape), strict=True)]
        else:
            if self.tokenizer is None:
                raise ValueError("prompt: this pipeline has no tokenizer; pass input_ids")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
            chat = use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))
            if chat:
                template = self.tokenizer.apply_chat_template
                prompts = [template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                           for p in prompts]  # fmt: skip
            rows = [list(self.tokenizer(p, add_special_tokens=not chat)["input_ids"]) for p in prompts]
        empty = [i for i, r in enumerate(rows) if not r]
        if empty:
            raise ValueError(f"prompt: row(s) {empty} encode to no tokens; a prompt needs at least one token")
        return rows

    def _pad_token_id(self) -> int:
        """The id left padding is filled with: the tokenizer's pad, the config's, EOS, else the mask token."""
        config = getattr(self.model, "config", None)
        for value in (getattr(self.tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None),
                      getattr(self.tokenizer, "eos_token_id", None)):  # fmt: skip
            if isinstance(value, int):
                return value
        return self.mask_token_id  # padding is masked out of attention: any id does

    @staticmethod
    def _row_generators(generator: torch.Generator | Sequence[torch.Generator] | None,
                        batch: int) -> list[torch.Generator]:  # fmt: skip
        """One generator per row: the caller's list, or rows seeded by draws from one generator (or the global RNG)."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(
                    f"generator: a list needs one torch.Generator per prompt ({batch}), got {generator!r}"
                )
            return list(generator)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**63 - 1, (batch,), generator=generator, device=device).tolist()
        return [torch.Generator(device).manual_seed(s) for s in seeds]

    # -- the model --------------------------------------------------------------------------------------------------
    def _forward_parameters(self) -> set[str]:
        return set(inspect.signature(self.model.forward).parameters)

    def _block_logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                      start: int, end: int, params: set[str]) -> torch.Tensor:  # fmt: skip
        """Logits (B', end − start, V) of the block's positions, in the sampling dtype."""
        keep = torch.arange(start, end, device=x.device) - int(self.shift_logits)  # (N,): Dream predicts i + 1 at i
        kwargs: dict[str, Any] = {"input_ids": x}  # (B', L)
        if attention_mask is not None:
            if self.key_mask_4d:
                length = attention_mask.shape[1]
                kwargs["attention_mask"] = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, length)
            else:
                kwargs["attention_mask"] = attention_mask  # (B', L), 0 on padding
        if position_ids is not None and "position_ids" in params:
            kwargs["position_ids"] = position_ids  # (B', L)
        sliced = "logits_to_keep" in params
        if sliced:
            kwargs["logits_to_keep"] = keep
        if "use_cache" in params:
            kwargs["use_cache"] = False
        out = self.model(**kwargs)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0] if isinstance(out, (tuple, list)) else None
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
            raise TypeError(
                f"{type(self.model).__name__} returned no (B, L, V) logits; DiffusionLMPipeline needs a model with "
                "an LM head (e.g. AutoModelForMaskedLM / AutoModelForCausalLM, not a bare AutoModel backbone)"
            )
        if not sliced or logits.shape[1] != keep.numel():
            logits = logits[:, keep]  # (B', N, V)
        return logits.to(precise_dtype(logits.device))

    # -- generation -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        gen_length: int = 128,
        steps: int = 128,
        block_length: int = 32,
        remasking: str = "low_confidence",
        temperature: float = 0.0,
        cfg_scale: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        *,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        use_chat_template: bool = True,
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> DiffusionLMPipelineOutput | tuple:
        """Generate `gen_length` tokens per prompt by masked diffusion (LLaDA, Nie et al. 2025); SparseD hooks run.

        `prompt` is wrapped in the tokenizer's chat template when it has one (`use_chat_template`); or pass token ids
        (`input_ids` (B, P), `attention_mask` marking real tokens). `callback_on_step_end(pipe, step, step_in_block,
        tensors)` runs after each step with the tensors named in `callback_on_step_end_tensor_inputs` (default
        ["x"]; also "x0", "confidence", "transfer_index", all of the current block) and may return {"x": ...}.
        Returns `DiffusionLMPipelineOutput(sequences (B, gen_length), texts)`, or that tuple without return_dict.
        """
        config = DiffusionLMConfig(gen_length=gen_length, steps=steps, block_length=block_length,
                                   remasking=remasking, temperature=temperature, cfg_scale=cfg_scale)  # fmt: skip
        names = ["x"] if callback_on_step_end_tensor_inputs is None else list(callback_on_step_end_tensor_inputs)
        unknown = [n for n in names if n not in CALLBACK_TENSOR_INPUTS]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {unknown} not in {list(CALLBACK_TENSOR_INPUTS)}")
        rows = self._encode(prompt, input_ids, attention_mask, use_chat_template)
        generators = self._row_generators(generator, len(rows)) if config.stochastic else None
        device = self._execution_device
        batch, prompt_length = len(rows), max(len(r) for r in rows)
        length = prompt_length + config.gen_length

        # the canvas: left-padded prompts, then gen_length mask tokens
        x = torch.full((batch, length), self.mask_token_id, dtype=torch.long)  # (B, L)
        mask = torch.ones(batch, length, dtype=torch.long)  # (B, L): 0 on padding
        for b, row in enumerate(rows):
            pad = prompt_length - len(row)
            x[b, :pad], mask[b, :pad] = self._pad_token_id(), 0
            x[b, pad:prompt_length] = torch.tensor(row, dtype=torch.long)
        x, mask = x.to(device), mask.to(device)
        padded = bool((mask == 0).any())
        masked = torch.zeros(batch, length, dtype=torch.bool, device=device)  # (B, L): still a mask token
        masked[:, prompt_length:] = True
        prompt_tokens = mask.bool() & ~masked  # (B, L): real prompt tokens, masked in the unconditional branch
        guided = config.cfg_scale > 0

        params = self._forward_parameters()
        if padded and "attention_mask" not in params:
            raise ValueError(
                f"prompts of different lengths need a model whose forward takes attention_mask; "
                f"{type(self.model).__name__}.forward does not: pass prompts of one length or one at a time"
            )
        if padded and "position_ids" not in params:
            warnings.warn(
                f"{type(self.model).__name__}.forward takes no position_ids: left-padded rows see shifted positions "
                "(as in LLaDA's own batch generate), so they may decode differently than alone",
                stacklevel=2,
            )
        model_mask = mask.repeat(2, 1) if guided else mask  # (B', L)
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, L): 0 at each row's first real token
        position_ids = position_ids.repeat(2, 1) if guided else position_ids  # (B', L)
        notify_dlm_generation_start(self.model, prompt_length=prompt_length, gen_length=config.gen_length,
                                    attention_mask=model_mask, total_steps=config.steps)  # fmt: skip

        per_block = config.steps_per_block
        progress = self.progress_bar(total=config.steps)
        for block in range(config.num_blocks):
            start = prompt_length + block * config.block_length
            end = start + config.block_length
            schedule = transfer_schedule(masked[:, start:end].sum(-1), per_block)  # (B, per_block)
            for i in range(per_block):
                step = block * per_block + i
                counts = schedule[:, i]  # (B,)
                if not bool(counts.any()):  # more steps than tokens: this step commits nothing, so no forward
                    progress.update()
                    continue
                notify_dlm_step(self.model, step=step, total_steps=config.steps)
                inputs = torch.cat([x, x.masked_fill(prompt_tokens, self.mask_token_id)]) if guided else x  # (B', L)
                logits = self._block_logits(
                    inputs, model_mask if padded else None, position_ids if padded else None, start, end, params
                )  # (B', N, V)
                if guided:
                    cond, uncond = logits[:batch], logits[batch:]
                    logits = uncond + (config.cfg_scale + 1.0) * (cond - uncond)  # (B, N, V)
                logits[..., self.mask_token_id] = float("-inf")  # the mask token is never a prediction
                block_x, block_masked = x[:, start:end], masked[:, start:end]  # (B, N)
                x0 = sample_tokens(logits, config.temperature, generators)  # (B, N)
                x0 = torch.where(block_masked, x0, block_x)
                scores = confidence(logits, x0, config.remasking, generators)  # (B, N)
                transfer_index = select_transfer(scores, block_masked, counts)  # (B, N)
                x[:, start:end] = torch.where(transfer_index, x0, block_x)
                masked[:, start:end] = block_masked & ~transfer_index
                if callback_on_step_end is not None:
                    tensors = {"x": x, "x0": x0, "confidence": scores, "transfer_index": transfer_index}
                    out = callback_on_step_end(self, step, i, {n: tensors[n] for n in names}) or {}
                    if "x" in out:
                        x = out["x"]
                progress.update()
        progress.close()

        sequences = x[:, prompt_length:]  # (B, gen_length)
        texts = self._decode(sequences) if self.tokenizer is not None else None
        if not return_dict:
            return sequences, texts
        return DiffusionLMPipelineOutput(sequences=sequences, texts=texts)

    def _decode(self, sequences: torch.Tensor) -> list[str]:
        """Each row's text up to its first EOS, special tokens skipped."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        rows = []
        for row in sequences.tolist():
            if isinstance(eos, int) and eos in row:
                row = row[: row.index(eos)]
            rows.append(row)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

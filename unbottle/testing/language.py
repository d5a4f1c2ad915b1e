"""Tiny offline diffusion language models: DiffusionGemma (block diffusion) and a LLaDA2-style masked diffusion LM.

Everything is built from configs with random weights (hidden size 32, 2 layers, 2 query heads / 1 KV head, head dim
16) and the word-level tokenizers of `unbottle.testing.tokenizers`; nothing touches the hub.

DiffusionGemma (`tiny_diffusion_gemma`, `tiny_diffusion_gemma_pipeline`): the stock transformers
`DiffusionGemmaForBlockDiffusion` (causal encoder + bidirectional decoder, tied weights, Gemma-4 MoE layers with 2
experts; one sliding-window layer then one full layer), canvas length 4. A text-only config is not possible: the
encoder always builds a Gemma-4 vision tower, so it gets a one-layer, 16-wide one that text prompts never run. The
tokenizer stands in for the processor (the pipeline only calls `apply_chat_template` and `batch_decode`, and reads
`processor.tokenizer` falling back to the processor itself). Ids: `<pad>` 0, `<unk>` 1, `<eos>` 2, `<bos>` 3,
`<|turn>` 4, `<turn|>` 5; the prompt reads `<bos><|turn>user {prompt}<turn|> <|turn>model`. diffusers 0.42.1 calls
`decoder.create_diffusion_decoder_attention_mask(past_key_values=...)`, a keyword transformers 5.24 renamed to
`cache` on that static method only, so the decoder instance gets a shim that forwards it (nothing else changes).

LLaDA2-style (`tiny_llada2`, `tiny_llada2_pipeline`): `LLaDA2Pipeline` calls `model(x, attention_mask=<2-D 0/1
mask>, position_ids=...)` on the prefix up to the current block and reads `.logits[:, -block_length:]`; the real
LLaDA2 is remote code, so this is the stock transformers `GemmaForCausalLM`, made bidirectional by
`use_bidirectional_attention=True` (each attention module's `is_causal` is False) together with `is_causal=False`
(the mask builder then makes a bidirectional padding mask instead of a causal one, and passes `is_causal=False` to
the attention function). A 4-D `attention_mask` (bool for sdpa, additive float for any backend) is passed
through untouched, so a block-causal mask is honoured too (both are checked in tests/test_fixtures_language.py).
Gemma rather than Llama/Qwen2: those also follow `config.is_causal=False`, but their attention modules keep
`is_causal=True`, a trap for an attention function that reads the module. The LM head is untied and its `<|mask|>`
row is zero, so, like a trained masked-diffusion LM, the model does not predict the mask token: with tied weights the
random model echoes its input, "predicts" the mask at every masked position, and the pipeline commits nothing.
Ids: `<pad>` 0, `<unk>` 1, `<|endoftext|>` 2 (eos), `<|mask|>` 3 (`tokenizer.mask_token_id`), `<role>` 4, `</role>` 5,
`<|role_end|>` 6; no bos; the prompt reads `<role>HUMAN</role> {prompt} <|role_end|> <role>ASSISTANT</role>`.

Attention routing (both models): every attention layer calls
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)` with `(module, q, k, v, mask,
dropout=, scaling=, is_causal=, [sliding_window=,] ...)`, q/k/v shaped (B, heads, L, head_dim) with GQA (2 query heads
share 1 KV head: use `module.num_key_value_groups`). The fixtures use `"sdpa"`. A function registered with
`transformers.AttentionInterface.register(name, fn)` is selected with `model.set_attn_implementation(name)`
(sub-configs follow). Register a mask builder under the same name too, e.g.
`AttentionMaskInterface.register(name, transformers.masking_utils.sdpa_mask)`: for a name without one, transformers
builds no mask and passes `attention_mask=None` (padding and sliding windows are then lost). DiffusionGemma's
attention scaling is 1.0 (q/k are RMS-normed) and its full-attention layers have no `v_proj` (values reuse the key
projection).

Limitations: random weights, so the text is word salad; the LLaDA stand-in is a dense Gemma (LLaDA2 is a Ling-2 MoE);
`LLaDA2Pipeline` in diffusers 0.42.1 sends a 2-D mask, so under the pipeline earlier blocks also see later ones (the
real model's block-causal training mask is not imposed); DiffusionGemma's vision path is untested.
"""

from __future__ import annotations

import functools
import inspect

import torch
from diffusers import BlockRefinementScheduler, DiffusionGemmaPipeline, LLaDA2Pipeline
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    GemmaConfig,
    GemmaForCausalLM,
    PreTrainedTokenizerFast,
)

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

CANVAS_LENGTH = 4  # DiffusionGemma canvas (block) length
LLADA_BLOCK_LENGTH = 4  # LLaDA2 scheduler block length
MASK_TOKEN = "<|mask|>"

_GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }} "
    "{{ m['content'] }}<turn|> {% endfor %}{% if add_generation_prompt %}<|turn>model {% endif %}"
)
_LLADA_CHAT_TEMPLATE = (
    "{% for m in messages %}<role>{{ 'HUMAN' if m['role'] == 'user' else m['role'] | upper }}</role> "
    "{{ m['content'] }} <|role_end|> {% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)


def _gemma_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-4-style word-level tokenizer with a chat template (`<bos><|turn>user ... <turn|>`)."""
    tok = word_level_tokenizer(
        128, pad="<pad>", eos="<eos>", bos="<bos>", unk="<unk>", extra_special=("<|turn>", "<turn|>"),
        words=WORDS + ("user", "model"),
    )  # fmt: skip
    tok.chat_template = _GEMMA_CHAT_TEMPLATE
    return tok


def _llada_tokenizer() -> PreTrainedTokenizerFast:
    """LLaDA2-style word-level tokenizer: `<|endoftext|>` eos, `<|mask|>` mask token, `<role>` chat template."""
    tok = word_level_tokenizer(
        128, pad="<pad>", eos="<|endoftext|>", bos=None, unk="<unk>",
        extra_special=(MASK_TOKEN, "<role>", "</role>", "<|role_end|>"),
        words=WORDS + ("human", "assistant", "system"),
    )  # fmt: skip
    tok.add_special_tokens({"mask_token": MASK_TOKEN})  # already in the vocab: sets mask_token_id, adds no id
    tok.chat_template = _LLADA_CHAT_TEMPLATE
    return tok


def _accept_past_key_values(decoder: torch.nn.Module) -> None:
    """Let `decoder.create_diffusion_decoder_attention_mask` take diffusers' `past_key_values=` (renamed `cache`)."""
    create = type(decoder).create_diffusion_decoder_attention_mask
    if "past_key_values" in inspect.signature(create).parameters:
        return

    @functools.wraps(create)
    def create_mask(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs.setdefault("cache", past_key_values)
        return create(*args, **kwargs)

    decoder.create_diffusion_decoder_attention_mask = create_mask


def tiny_diffusion_gemma(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast]:
    """A random 2-layer `DiffusionGemmaForBlockDiffusion` (sdpa, canvas 4) and its offline chat tokenizer."""
    tok = _gemma_tokenizer()
    text_config = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=256, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], num_experts=2, top_k_experts=1, moe_intermediate_size=32,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        initializer_range=0.2,
    )  # fmt: skip
    vision_config = dict(
        model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, position_embedding_size=64,
    )  # fmt: skip
    config = DiffusionGemmaConfig(
        text_config=text_config, vision_config=vision_config, canvas_length=CANVAS_LENGTH, initializer_range=0.2,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config)
    _accept_past_key_values(model.model.decoder)
    return model.to(device=device, dtype=dtype).eval(), tok


def tiny_diffusion_gemma_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> DiffusionGemmaPipeline:
    """Stock `DiffusionGemmaPipeline` around `tiny_diffusion_gemma` with a `BlockRefinementScheduler`."""
    model, tok = tiny_diffusion_gemma(device, dtype, seed)
    scheduler = BlockRefinementScheduler(block_length=CANVAS_LENGTH)
    pipe = DiffusionGemmaPipeline(model=model, scheduler=scheduler, processor=tok)
    return finish_pipeline(pipe, device, dtype)


def tiny_llada2(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[GemmaForCausalLM, PreTrainedTokenizerFast]:
    """A random 2-layer bidirectional `GemmaForCausalLM` (sdpa, never predicts `<|mask|>`) and its tokenizer."""
    tok = _llada_tokenizer()
    config = GemmaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False, initializer_range=0.2,
        use_bidirectional_attention=True, is_causal=False, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GemmaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[tok.mask_token_id].zero_()
    return model.to(device=device, dtype=dtype).eval(), tok


def tiny_llada2_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LLaDA2Pipeline:
    """Stock `LLaDA2Pipeline` + `BlockRefinementScheduler` (block 4) around `tiny_llada2`."""
    model, tok = tiny_llada2(device, dtype, seed)
    scheduler = BlockRefinementScheduler(block_length=LLADA_BLOCK_LENGTH)
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tok)
    return finish_pipeline(pipe, device, dtype)

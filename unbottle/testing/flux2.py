"""Tiny offline FLUX.2 pipelines: Flux2Pipeline (Mistral 3 text encoder) and Flux2KleinPipeline (Qwen3), stock classes.

Configs follow diffusers' own pipeline tests (tests/pipelines/flux2), with the text encoders built from configs and
word-level fast tokenizers whose minimal chat templates render the stock conversations (Mistral's system prompt and
[INST] turns; Qwen's im_start turns with thinking off). Each text encoder has as many layers as the pipeline's
default `text_encoder_out_layers` reads ((10, 20, 30); Klein (9, 18, 27)), so the defaults run; the system message's
words are in the vocabulary, so its ~30 tokens and the prompt's fit in a `max_sequence_length` of 48. The VAE halves
the image twice (vae_scale_factor 2: height/width multiples of 4), and its batch-norm statistics are seeded values,
not a fresh layer's 0 and 1, so a latent that skipped the pipeline's normalization would show.
"""

from __future__ import annotations

import re

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

# Mistral's conversation format for text-only turns (content: a list of {"type": "text", "text": ...} parts)
_MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]{% endif %}{% endfor %}"
)
# Qwen3's: im_start turns, the assistant's opened with an empty think block when thinking is off
_QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
_SYSTEM_WORDS = tuple(word.lower() for word in re.findall(r"\w+", SYSTEM_MESSAGE))


def _mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral-style word-level tokenizer: `<s>` (id 2) from the template, [SYSTEM_PROMPT]/[INST] turns, pad id 0."""
    specials = ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]", "[IMG]")
    tokenizer = word_level_tokenizer(
        512, eos="</s>", bos="<s>", extra_special=specials, words=tuple(dict.fromkeys(WORDS + _SYSTEM_WORDS))
    )
    tokenizer.chat_template = _MISTRAL_TEMPLATE
    return tokenizer


def _qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3-style word-level tokenizer: no bos/eos added, im_start turns, pad `<|endoftext|>` (id 0)."""
    specials = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
    tokenizer = word_level_tokenizer(
        512, pad="<|endoftext|>", eos=None, extra_special=specials, words=WORDS + ("user", "assistant")
    )
    tokenizer.chat_template = _QWEN3_TEMPLATE
    return tokenizer


def _transformer(seed: int, guidance_embeds: bool, text_dim: int) -> Flux2Transformer2DModel:
    # 2 latent channels → 8 patchified; RoPE over (T, H, W, L) in 4 × 4 of the 16-wide heads
    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=text_dim, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )  # fmt: skip


def _vae(seed: int) -> AutoencoderKLFlux2:
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        sample_size=32, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(4, 8), layers_per_block=1, latent_channels=2, norm_num_groups=2, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    vae.bn.running_mean.copy_(0.5 * torch.randn(vae.bn.num_features, generator=generator))  # (4C,)
    vae.bn.running_var.copy_(torch.rand(vae.bn.num_features, generator=generator) + 0.5)  # (4C,), in [0.5, 1.5)
    return vae


def tiny_flux2_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Flux2Pipeline:
    """Tiny FLUX.2 [dev] (double + single stream blocks, 4-D RoPE, embedded guidance; Mistral 3 with 30 layers);
    height/width multiples of 4, default 32. Pass `prompt=` by keyword: the first positional argument is `image`."""
    tokenizer = _mistral_tokenizer()
    transformer = _transformer(seed, guidance_embeds=True, text_dim=3 * 16)  # 3 hidden layers of 16, stacked
    torch.manual_seed(seed + 1)
    config = Mistral3Config(
        text_config=dict(
            model_type="mistral", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
            num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
            max_position_embeddings=1024, sliding_window=None, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        ),
        vision_config=dict(
            model_type="pixtral", hidden_size=8, num_hidden_layers=1, num_attention_heads=2, head_dim=4,
            intermediate_size=16, image_size=16, patch_size=4, num_channels=3,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), vision_feature_layer=-1,
    )  # fmt: skip
    text_encoder = Mistral3ForConditionalGeneration(config)
    pipe = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(seed + 2), text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )  # fmt: skip
    pipe.default_sample_size = 16  # × vae_scale_factor 2 = 32 px; the stock 128 is for real FLUX.2
    return finish_pipeline(pipe, device, dtype)


def tiny_flux2_klein_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Flux2KleinPipeline:
    """Tiny FLUX.2 [klein] base (no guidance embedding; CFG on an empty prompt when guidance_scale > 1; Qwen3 with 27
    layers); height/width multiples of 4, default 32. Pass `prompt=` by keyword: the first positional is `image`."""
    tokenizer = _qwen3_tokenizer()
    transformer = _transformer(seed, guidance_embeds=False, text_dim=3 * 16)
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=27,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
            pad_token_id=0, bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(seed + 2), text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer, is_distilled=False,
    )  # fmt: skip
    pipe.default_sample_size = 16
    return finish_pipeline(pipe, device, dtype)

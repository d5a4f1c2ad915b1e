"""Tiny offline Lumina-Image 2.0 text-to-image pipeline (Lumina2Pipeline) in stock diffusers classes.

The config follows diffusers' own pipeline test recipe (tests/pipelines/lumina2): a 2-layer joint-attention DiT with
one noise- and one context-refiner layer, a Gemma 2 text encoder built from a config whose second-to-last hidden
states are the caption features, the stock flow-matching scheduler with a static shift of 6 and a ×8 KL VAE (the
pipeline assumes ×8 whatever the VAE). The tokenizer knows every word of the pipeline's system prompt, so the prompt
the text encoder sees (system prompt, "<Prompt Start>", caption) holds no unknown token.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

from ._common import finish_pipeline
from .tokenizers import WORDS, word_level_tokenizer

# the words of Lumina2Pipeline's system prompt and of its "<Prompt Start>" separator
_SYSTEM_WORDS = tuple(
    """
    you assistant designed generate superior images degree text alignment based textual prompts user prompt start < >
    """.split()
)


def _gemma_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-style word-level tokenizer: `<bos>` prepended, no end token, pad `<pad>` (id 0)."""
    return word_level_tokenizer(512, pad="<pad>", eos=None, bos="<bos>", words=WORDS + _SYSTEM_WORDS)


def tiny_lumina2_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Lumina2Pipeline:
    """Tiny Lumina-Image 2.0 (joint-attention DiT, Gemma 2); height/width multiples of 16, default 64."""
    # 64×64 image → latents (1, 4, 8, 8) → 16 patch tokens after the caption's real tokens
    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 2, 2), axes_lens=(128, 32, 32),
        cap_feat_dim=8,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(  # four blocks: ×8, as the pipeline's fixed vae_scale_factor; Flux VAE's latent scaling
        block_out_channels=[4, 4, 4, 4], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    tokenizer = _gemma_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=4, pad_token_id=0, bos_token_id=2, eos_token_id=None,
        )
    )  # fmt: skip
    pipe = Lumina2Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer,
    )  # fmt: skip
    template = pipe.system_prompt + " <Prompt Start> "
    if tokenizer.unk_token_id in tokenizer(template).input_ids:
        raise RuntimeError("Lumina2Pipeline's system prompt changed: it holds words the tiny tokenizer does not know")
    return finish_pipeline(pipe, device, dtype)

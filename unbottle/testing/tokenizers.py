"""Offline tokenizers for the tiny test pipelines: a word-level CLIP BPE and a word-level T5-style fast tokenizer.

Both know the words of the shapes world and of common prompts (`WORDS`); they are built by `unbottle.tokenizers`.
"""

from __future__ import annotations

from transformers import CLIPTokenizer, PreTrainedTokenizerFast

from ..tokenizers import WORDS, clip_bpe_tokenizer, word_level_tokenizer

__all__ = ["WORDS", "tiny_clip_tokenizer", "tiny_t5_tokenizer", "word_level_tokenizer"]


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary (< 1,000 ids) spells every word of `WORDS` as one token."""
    return clip_bpe_tokenizer(model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """T5/UMT5-style tokenizer: word ids, `</s>` appended, pad id 0."""
    return word_level_tokenizer(model_max_length)

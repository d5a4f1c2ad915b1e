"""Alignment of noun phrases to the token positions of the full prompt, as the pipeline tokenizes it.

Structured Diffusion Guidance (Feng et al. 2023, arXiv 2212.05032) splices each phrase's own token embeddings into a
copy of the full prompt's embedding at the phrase's token positions, so those positions must be the ones the
pipeline's tokenizer gives the full prompt: special tokens included (CLIP's BOS at 0, so the first word is at 1;
T5/UMT5 have no BOS and put EOS after the last kept token), truncated at `max_length` (default: the tokenizer's
`model_max_length`, what diffusers pipelines use).

Spans are [start, end) token indices. A phrase wholly cut off by truncation gets None; a phrase partly cut off gets
its span clipped to the tokens that were kept (the end token that follows them is never part of a span).

Fast tokenizers use `return_offsets_mapping` (a token belongs to a phrase when its characters overlap the phrase's);
other tokenizers fall back to re-tokenizing the prompt's prefixes up to the phrase's start and end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Span = tuple[int, int]


def _occurrences(prompt: str, phrase: str) -> list[Span]:
    words = phrase.split()
    if not words:
        raise ValueError("empty phrase")
    pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)"
    return [(m.start(), m.end()) for m in re.finditer(pattern, prompt, flags=re.IGNORECASE)]


def phrase_char_spans(prompt: str, phrases: Sequence[str]) -> list[Span]:
    """[start, end) character spans of `phrases` in `prompt` (Feng et al. 2023, SDG: each NP's place in the prompt)."""
    # Phrases come in pre-order (noun_phrases), so start offsets never decrease: each phrase takes its first unused
    # occurrence at or after the previous phrase's start ("a red cube and a red cube" -> two different spans). A phrase
    # out of that order falls back to its first unused occurrence, then to its first occurrence. Matching ignores
    # case and the amount of whitespace between words, and respects word boundaries.
    spans: list[Span] = []
    used: set[Span] = set()
    previous = 0
    for phrase in phrases:
        found = _occurrences(prompt, phrase)
        if not found:
            raise ValueError(f"phrase {phrase!r} does not occur in prompt {prompt!r}")
        fresh = [s for s in found if s not in used]
        span = next((s for s in fresh if s[0] >= previous), fresh[0] if fresh else found[0])
        used.add(span)
        spans.append(span)
        previous = span[0]
    return spans


def _max_length(tokenizer: Any, max_length: int | None) -> int | None:
    if max_length is None:
        max_length = getattr(tokenizer, "model_max_length", None)
    return max_length if max_length is not None and max_length < 1_000_000 else None  # "no limit" sentinel: 1e30


def _spans_by_offsets(tokenizer: Any, prompt: str, chars: Sequence[Span], max_length: int | None) -> list[Span | None]:
    enc = tokenizer(
        prompt,
        truncation=max_length is not None,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    content = [
        (i, s, e)
        for i, ((s, e), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True))
        if not special and e > s
    ]
    out: list[Span | None] = []
    for cs, ce in chars:
        hit = [i for i, s, e in content if s < ce and e > cs]
        out.append((hit[0], hit[-1] + 1) if hit else None)
    return out


def _spans_by_prefix(tokenizer: Any, prompt: str, chars: Sequence[Span], max_length: int | None) -> list[Span | None]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else 0

    plain = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt)["input_ids"]
    lead = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    kept = len(plain) if max_length is None else max(0, min(len(plain), max_length - (len(full) - len(plain))))
    out: list[Span | None] = []
    for cs, ce in chars:
        start, end = min(count(prompt[:cs].rstrip()), kept), min(count(prompt[:ce]), kept)
        out.append((lead + start, lead + end) if end > start else None)
    return out


def phrase_token_spans(
    tokenizer: Any, prompt: str, phrases: Sequence[str], max_length: int | None = None
) -> list[Span | None]:
    """Token [start, end) of each phrase in the tokenized full prompt (Feng et al. 2023, SDG's BPE alignment)."""
    chars = phrase_char_spans(prompt, phrases)
    limit = _max_length(tokenizer, max_length)
    if getattr(tokenizer, "is_fast", False):
        return _spans_by_offsets(tokenizer, prompt, chars, limit)
    return _spans_by_prefix(tokenizer, prompt, chars, limit)

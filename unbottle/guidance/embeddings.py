"""Structured text embeddings: each noun phrase encoded alone and spliced into a copy of the full prompt.

Feng et al. 2023, "Training-Free Structured Diffusion Guidance" (arXiv 2212.05032): for a prompt with noun phrases
NP_1…NP_k, W_p is the full prompt's embedding and W̄_i is a copy of W_p whose rows at NP_i's token positions are
replaced by NP_i's own encoding (its tokens after the BOS, as many as the phrase has; BOS, end token and padding stay
from W_p). The stack [W_p, W̄_1…W̄_k] gives the values of the structured cross-attention; the conjunction mode also
uses one copy with every phrase spliced in (later phrases overwrite earlier ones where they nest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .alignment import Span, phrase_token_spans
from .phrases import noun_phrases


def splice(full: torch.Tensor, phrase: torch.Tensor, full_span: Span, phrase_span: Span) -> torch.Tensor:
    """A copy of `full` (L, C) with rows full_span taken from `phrase` (L', C) rows phrase_span (Feng et al. 2023)."""
    (fs, fe), (ps, pe) = full_span, phrase_span
    n = min(fe - fs, pe - ps)
    out = full.clone()
    out[fs : fs + n] = phrase[ps : ps + n]
    return out


def structured_embeddings(
    full: torch.Tensor,
    phrase_embeds: torch.Tensor,
    full_spans: Sequence[Span | None],
    phrase_spans: Sequence[Span | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """([W_p, W̄_1…W̄_k] (1 + k, L, C), all phrases spliced (L, C)) from the full (L, C) and phrase (k, L', C) rows.

    Feng et al. 2023, Training-Free Structured Diffusion Guidance. A phrase with no span (truncated away) is skipped.
    """
    stack, single = [full], full.clone()  # (L, C) each
    for i, (fspan, pspan) in enumerate(zip(full_spans, phrase_spans, strict=True)):
        if fspan is None or pspan is None:
            continue
        stack.append(splice(full, phrase_embeds[i], fspan, pspan))
        single = splice(single, phrase_embeds[i], fspan, pspan)
    return torch.stack(stack), single  # (1 + k, L, C), (L, C)


def prompt_structure(
    prompt: str,
    full: torch.Tensor,
    encode: Callable[[list[str]], torch.Tensor],
    tokenizer: Any,
    max_length: int | None = None,
    parser: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured embeddings of one prompt: its phrases parsed, aligned, encoded by `encode` and spliced (Feng 2023).

    `full` (L, C) is the prompt's own embedding; `encode(phrases)` returns (k, L', C) through the pipeline's encoder.
    No phrase → ((1, L, C) = [full], full).
    """
    phrases = noun_phrases(prompt, parser=parser)
    full_spans = phrase_token_spans(tokenizer, prompt, phrases, max_length) if phrases else []
    keep = [i for i, span in enumerate(full_spans) if span is not None]
    if not keep:
        return full[None], full.clone()
    phrases = [phrases[i] for i in keep]
    full_spans = [full_spans[i] for i in keep]
    phrase_spans = [phrase_token_spans(tokenizer, p, [p], max_length)[0] for p in phrases]
    phrase_embeds = encode(phrases).to(device=full.device, dtype=full.dtype)  # (k, L', C)
    return structured_embeddings(full, phrase_embeds, full_spans, phrase_spans)

"""Structured cross-attention guidance (Training-Free Structured Diffusion Guidance) (issue #7)."""

from .._pending import pending_function
from .alignment import phrase_char_spans, phrase_token_spans
from .phrases import ParserUnavailableError, noun_phrases

_FEATURE = "structured cross-attention guidance"

enable_structured_guidance = pending_function("enable_structured_guidance", _FEATURE, 7)
disable_structured_guidance = pending_function("disable_structured_guidance", _FEATURE, 7)

__all__ = [
    "ParserUnavailableError",
    "disable_structured_guidance",
    "enable_structured_guidance",
    "noun_phrases",
    "phrase_char_spans",
    "phrase_token_spans",
]

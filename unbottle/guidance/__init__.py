"""Structured cross-attention guidance (Training-Free Structured Diffusion Guidance) (issue #7)."""

from .._pending import pending_function

_FEATURE = "structured cross-attention guidance"

enable_structured_guidance = pending_function("enable_structured_guidance", _FEATURE, 7)
disable_structured_guidance = pending_function("disable_structured_guidance", _FEATURE, 7)
noun_phrases = pending_function("noun_phrases", "noun-phrase extraction for structured guidance", 7)

__all__ = ["disable_structured_guidance", "enable_structured_guidance", "noun_phrases"]

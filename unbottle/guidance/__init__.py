"""Structured cross-attention guidance (Training-Free Structured Diffusion Guidance)."""

from .alignment import phrase_char_spans, phrase_token_spans
from .embeddings import prompt_structure, splice, structured_embeddings
from .enable import (
    StructuredGuidanceHandle,
    StructuredGuidanceOptions,
    disable_structured_guidance,
    enable_structured_guidance,
)
from .phrases import ParserUnavailableError, noun_phrases
from .processor import StructuredCrossAttnProcessor

__all__ = [
    "ParserUnavailableError",
    "StructuredCrossAttnProcessor",
    "StructuredGuidanceHandle",
    "StructuredGuidanceOptions",
    "disable_structured_guidance",
    "enable_structured_guidance",
    "noun_phrases",
    "phrase_char_spans",
    "phrase_token_spans",
    "prompt_structure",
    "splice",
    "structured_embeddings",
]

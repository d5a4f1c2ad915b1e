"""The "shapes" testbed: a seeded procedural world of coloured shapes, captions, and a verifiable evaluator."""

from .captions import CaptionSpec, Mention, caption, parse_caption, spec_of
from .pretrained import call_defaults, load_pipeline
from .render import render_frame, render_image, render_video
from .world import COLORS, SHAPES, SIZES, TEXTURES, Obj, Scene, sample_scene

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "CaptionSpec",
    "Mention",
    "Obj",
    "Scene",
    "call_defaults",
    "caption",
    "load_pipeline",
    "parse_caption",
    "render_frame",
    "render_image",
    "render_video",
    "sample_scene",
    "spec_of",
]

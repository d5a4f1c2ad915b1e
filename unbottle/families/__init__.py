"""Model families: one record per diffusers family (classes, and the seams each feature drives it through).

Every feature (sparse attention, bottleneck sampling, noise search, structured guidance) looks its model or pipeline
up in one registry; `register_family` adds a family that every feature then sees. Families sit below the features:
nothing here imports them.
"""

from .cogvideox import COGVIDEOX
from .family import FEATURES, CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .flux import FLUX
from .hunyuan_video import HUNYUAN_VIDEO
from .layout import TokenLayout
from .ltx import LTX
from .pixart import PIXART
from .registry import (
    UnsupportedModelError,
    family_for_model,
    family_for_pipeline,
    family_named,
    register_family,
    registered_families,
    supported_families,
)
from .sd3 import SD3
from .sdxl import SDXL
from .stable_diffusion import STABLE_DIFFUSION
from .wan import WAN

# the built-in families, in lookup order (a model class two families share resolves to the first)
BUILTIN = (FLUX, SD3, PIXART, COGVIDEOX, WAN, HUNYUAN_VIDEO, LTX, STABLE_DIFFUSION, SDXL)
for _family in BUILTIN:
    register_family(_family)
del _family

__all__ = [
    "BUILTIN",
    "FEATURES",
    "CrossAttentionText",
    "Family",
    "Latents",
    "PromptEncoding",
    "SelfAttention",
    "TokenLayout",
    "UnsupportedModelError",
    "family_for_model",
    "family_for_pipeline",
    "family_named",
    "register_family",
    "registered_families",
    "supported_families",
]

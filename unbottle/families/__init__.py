"""Model families: one record per diffusers family (classes, and the seams each feature drives it through).

Every feature (sparse attention, bottleneck sampling, noise search, structured guidance) looks its model or pipeline
up in one registry; `register_family` adds a family that every feature then sees. Families sit below the features:
nothing here imports them.
"""

from .allegro import ALLEGRO
from .auraflow import AURAFLOW
from .bria import BRIA
from .chroma import CHROMA
from .chronoedit import CHRONOEDIT
from .cogvideox import COGVIDEOX
from .cogview import COGVIEW3_PLUS, COGVIEW4
from .consisid import CONSISID
from .cosmos import COSMOS
from .dit import DIT
from .easyanimate import EASYANIMATE
from .family import FEATURES, CrossAttentionText, Family, Latents, PromptEncoding, SelfAttention
from .flux import FLUX
from .flux2 import FLUX2
from .hidream import HIDREAM_IMAGE
from .hunyuan_image import HUNYUAN_IMAGE
from .hunyuan_video import HUNYUAN_VIDEO
from .hunyuan_video15 import HUNYUAN_VIDEO15
from .kandinsky5 import KANDINSKY5
from .latte import LATTE
from .layout import TokenLayout
from .longcat_image import LONGCAT_IMAGE
from .ltx import LTX
from .ltx2 import LTX2
from .lumina2 import LUMINA2
from .ovis_image import OVIS_IMAGE
from .parallel import parallel_plan
from .pixart import PIXART
from .qwenimage import QWEN_IMAGE
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
from .skyreels_v2 import SKYREELS_V2
from .stable_diffusion import STABLE_DIFFUSION
from .wan import WAN
from .wan_animate import WAN_ANIMATE
from .wan_i2v import WAN_I2V
from .wan_vace import WAN_VACE
from .z_image import Z_IMAGE

# the built-in families, in lookup order (a model class two families share resolves to the first)
BUILTIN = (
    FLUX, SD3, PIXART, COGVIDEOX, WAN, HUNYUAN_VIDEO, LTX, STABLE_DIFFUSION, SDXL,
    WAN_VACE, SKYREELS_V2, CHRONOEDIT, WAN_ANIMATE, WAN_I2V, CONSISID,
    HUNYUAN_VIDEO15, HUNYUAN_IMAGE, LTX2, KANDINSKY5, LONGCAT_IMAGE,
    QWEN_IMAGE, FLUX2, CHROMA, AURAFLOW, COGVIEW4, LUMINA2, Z_IMAGE, HIDREAM_IMAGE, COGVIEW3_PLUS, BRIA,
    DIT, OVIS_IMAGE, ALLEGRO, LATTE, EASYANIMATE, COSMOS,
)  # fmt: skip
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
    "parallel_plan",
    "register_family",
    "registered_families",
    "supported_families",
]

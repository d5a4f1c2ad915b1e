"""Offline tiny-model fixtures: complete stock pipelines with tiny random weights, for tests (ours and yours).

Every `tiny_*` function is seeded, builds its modules in eval mode with offline tokenizers, needs no network and runs
two inference steps on a CPU in seconds.
"""

from .auraflow import tiny_auraflow_pipeline
from .chronoedit import tiny_chronoedit_pipeline
from .cogview4 import tiny_cogview4_pipeline
from .cosmos import tiny_cosmos_pipeline
from .easyanimate import tiny_easyanimate_pipeline
from .flux2 import tiny_flux2_klein_pipeline, tiny_flux2_pipeline
from .flux_like import tiny_bria_pipeline, tiny_chroma_pipeline, tiny_ovis_image_pipeline
from .hidream import tiny_hidream_pipeline
from .hunyuan_image import tiny_hunyuan_image_pipeline
from .hunyuan_video15 import tiny_hunyuan_video15_pipeline
from .image import (
    tiny_flux_pipeline,
    tiny_pixart_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
    tiny_stable_diffusion_pipeline,
)
from .kandinsky5 import tiny_kandinsky5_pipeline
from .language import tiny_diffusion_gemma, tiny_diffusion_gemma_pipeline, tiny_llada2, tiny_llada2_pipeline
from .longcat_image import tiny_longcat_image_pipeline
from .ltx2 import tiny_ltx2_pipeline
from .lumina2 import tiny_lumina2_pipeline
from .qwen_image import tiny_qwen_image_pipeline
from .skyreels_v2 import tiny_skyreels_v2_pipeline
from .tokenizers import WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer, word_level_tokenizer
from .video import tiny_cogvideox_pipeline, tiny_hunyuan_video_pipeline, tiny_ltx_pipeline, tiny_wan_pipeline
from .wan22 import tiny_wan22_pipeline
from .wan_i2v import tiny_wan_i2v_pipeline, tiny_wan_ti2v_pipeline
from .wan_vace import tiny_wan_vace_pipeline
from .z_image import tiny_z_image_pipeline

IMAGE_FIXTURES = {
    "stable_diffusion": tiny_stable_diffusion_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "flux": tiny_flux_pipeline,
    "pixart": tiny_pixart_pipeline,
}
VIDEO_FIXTURES = {
    "cogvideox": tiny_cogvideox_pipeline,
    "wan": tiny_wan_pipeline,
    "hunyuan_video": tiny_hunyuan_video_pipeline,
    "ltx": tiny_ltx_pipeline,
}

__all__ = [
    "IMAGE_FIXTURES",
    "VIDEO_FIXTURES",
    "WORDS",
    "tiny_auraflow_pipeline",
    "tiny_bria_pipeline",
    "tiny_chroma_pipeline",
    "tiny_chronoedit_pipeline",
    "tiny_clip_tokenizer",
    "tiny_cogvideox_pipeline",
    "tiny_cogview4_pipeline",
    "tiny_cosmos_pipeline",
    "tiny_diffusion_gemma",
    "tiny_diffusion_gemma_pipeline",
    "tiny_easyanimate_pipeline",
    "tiny_flux2_klein_pipeline",
    "tiny_flux2_pipeline",
    "tiny_flux_pipeline",
    "tiny_hidream_pipeline",
    "tiny_hunyuan_image_pipeline",
    "tiny_hunyuan_video15_pipeline",
    "tiny_hunyuan_video_pipeline",
    "tiny_kandinsky5_pipeline",
    "tiny_llada2",
    "tiny_llada2_pipeline",
    "tiny_longcat_image_pipeline",
    "tiny_ltx2_pipeline",
    "tiny_ltx_pipeline",
    "tiny_lumina2_pipeline",
    "tiny_ovis_image_pipeline",
    "tiny_pixart_pipeline",
    "tiny_qwen_image_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_skyreels_v2_pipeline",
    "tiny_stable_diffusion_pipeline",
    "tiny_t5_tokenizer",
    "tiny_wan22_pipeline",
    "tiny_wan_i2v_pipeline",
    "tiny_wan_pipeline",
    "tiny_wan_ti2v_pipeline",
    "tiny_wan_vace_pipeline",
    "tiny_z_image_pipeline",
    "word_level_tokenizer",
]

"""Offline tiny-model fixtures: complete stock pipelines with tiny random weights, for tests (ours and yours).

Every `tiny_*` function is seeded, builds its modules in eval mode with offline tokenizers, needs no network and runs
two inference steps on a CPU in seconds.
"""

from .flux2 import tiny_flux2_klein_pipeline, tiny_flux2_pipeline
from .hunyuan_video15 import tiny_hunyuan_video15_pipeline
from .image import (
    tiny_flux_pipeline,
    tiny_pixart_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
    tiny_stable_diffusion_pipeline,
)
from .language import tiny_diffusion_gemma, tiny_diffusion_gemma_pipeline, tiny_llada2, tiny_llada2_pipeline
from .ltx2 import tiny_ltx2_pipeline
from .qwen_image import tiny_qwen_image_pipeline
from .tokenizers import WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer, word_level_tokenizer
from .video import tiny_cogvideox_pipeline, tiny_hunyuan_video_pipeline, tiny_ltx_pipeline, tiny_wan_pipeline
from .wan22 import tiny_wan22_pipeline
from .wan_i2v import tiny_wan_i2v_pipeline, tiny_wan_ti2v_pipeline

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
    "tiny_clip_tokenizer",
    "tiny_cogvideox_pipeline",
    "tiny_diffusion_gemma",
    "tiny_diffusion_gemma_pipeline",
    "tiny_flux2_klein_pipeline",
    "tiny_flux2_pipeline",
    "tiny_flux_pipeline",
    "tiny_hunyuan_video15_pipeline",
    "tiny_hunyuan_video_pipeline",
    "tiny_llada2",
    "tiny_llada2_pipeline",
    "tiny_ltx2_pipeline",
    "tiny_ltx_pipeline",
    "tiny_pixart_pipeline",
    "tiny_qwen_image_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_stable_diffusion_pipeline",
    "tiny_t5_tokenizer",
    "tiny_wan22_pipeline",
    "tiny_wan_i2v_pipeline",
    "tiny_wan_pipeline",
    "tiny_wan_ti2v_pipeline",
    "word_level_tokenizer",
]

"""The shipped shapes models: loaders for the text-to-image/video WanPipeline and the retrieval diffusion LM.

The weights live in `unbottle/assets/shapes/` (fp16 safetensors, each folder with a `README.md` model card) and load
offline on CPU in about a second; `examples/shapes/` re-creates them on one GPU. The third model, the shapes-clip
reward, loads with `unbottle.shapes.clip.load_shapes_clip()`.

    pipe = unbottle.shapes.load_pipeline("t2i")
    image = pipe("a red circle to the left of a blue square", **unbottle.shapes.call_defaults("t2i")).frames[0][0]
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "shapes"
T2V_DIR, DLM_DIR = ASSETS / "t2v", ASSETS / "dlm"
KINDS = ("t2i", "t2v", "dlm")

# What the models were trained for: 128 px; videos of 33 frames (9 latent frames); answers of 2–4 tokens, decoded
# greedily one token per step (`unbottle.shapes.retrieval.decode` is the same decoding).
_CALL_DEFAULTS = {
    "t2i": {"height": 128, "width": 128, "num_frames": 1, "num_inference_steps": 20, "guidance_scale": 4.0},
    "t2v": {"height": 128, "width": 128, "num_frames": 33, "num_inference_steps": 20, "guidance_scale": 4.0},
    "dlm": {"use_chat_template": False, "gen_length": 4, "block_length": 4, "num_inference_steps": 4,
            "sampling_method": "greedy", "threshold": 1.5, "editing_threshold": None, "eos_early_stop": False},
}  # fmt: skip


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a shapes model; choose one of {', '.join(KINDS)}")


def call_defaults(kind: str) -> MappingProxyType:
    """The call arguments a shapes model was trained for (size, frames, steps, guidance / decoding)."""
    _check_kind(kind)
    return MappingProxyType(dict(_CALL_DEFAULTS[kind]))


def _missing(folder: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"the shipped shapes weights are missing at {folder}; reinstall unbottle, or re-create them with "
        "`bash examples/shapes/train_all.sh` on a GPU and copy them there"
    )


def load_pipeline(kind: str = "t2i", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a shipped shapes model as a stock diffusers pipeline (`WanPipeline` or `LLaDA2Pipeline`), offline.

    "t2i" and "t2v" are the same WanPipeline (images are 1-frame videos; see `call_defaults`); "dlm" is the
    bidirectional GemmaForCausalLM trained on key–value retrieval, in diffusers' `LLaDA2Pipeline`.
    """
    _check_kind(kind)
    if kind in ("t2i", "t2v"):
        from diffusers import WanPipeline

        if not (T2V_DIR / "model_index.json").exists():
            raise _missing(T2V_DIR)
        pipe = WanPipeline.from_pretrained(T2V_DIR, dtype=dtype, local_files_only=True)
    else:
        from diffusers import BlockRefinementScheduler, LLaDA2Pipeline
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (DLM_DIR / "config.json").exists():
            raise _missing(DLM_DIR)
        model = AutoModelForCausalLM.from_pretrained(DLM_DIR, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(DLM_DIR, local_files_only=True)
        block = _CALL_DEFAULTS["dlm"]["block_length"]
        pipe = LLaDA2Pipeline(model=model.eval(), scheduler=BlockRefinementScheduler(block_length=block),
                              tokenizer=tokenizer)  # fmt: skip
    return pipe.to(device)

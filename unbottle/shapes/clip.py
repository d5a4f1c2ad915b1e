"""A small open_clip model for the shapes world: the offline, differentiable reward model ("shapes-clip").

    from unbottle.shapes.clip import load_shapes_clip
    model, preprocess, tokenize = load_shapes_clip("runs/clip/shapes_clip.safetensors", device="cuda")
    image = model.encode_image(preprocess(pixels), normalize=True)   # pixels: (B, 3, H, W) float in [0, 1]
    text = model.encode_text(tokenize(["a red circle"]).to("cuda"), normalize=True)

The model is a stock `open_clip.model.CLIP` built from `CLIP_CONFIG` (registered as "shapes-clip", so
`open_clip.create_model("shapes-clip")` builds it too). The text tower reads the word-level tokenizer of
`unbottle.tokenizers` (`<pad>` = 0, `<unk>` = 1, `</s>` = 2, then the words) and pools with
`pool_type="eos"` at `eos_id` 2: the feature is read at the first end token, and the causal mask keeps the padding
after it out. (open_clip's default `argmax` pooling reads the highest id in the sequence: for these ids a word.)
Preprocessing is torch ops only (resize the shorter side with antialiased bicubic, centre-crop, normalize with
open_clip's OpenAI mean/std), so a reward built on it is differentiable down to the pixels. Train it with
`examples/shapes/train_clip.py`.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL_NAME = "shapes-clip"
CONTEXT_LENGTH = 32
IMAGE_SIZE = 128
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN / _STD
STD = (0.26862954, 0.26130258, 0.27577711)


@functools.cache
def _hf_tokenizer(context_length: int = CONTEXT_LENGTH):
    from ..tokenizers import word_level_tokenizer

    return word_level_tokenizer(context_length)


class ShapesTokenizer:
    """list[str] (or one str) → LongTensor (B, context_length): lower-cased words, then `</s>`, then `<pad>` (0).

    Captions longer than `context_length - 1` words are cut, always keeping the end token (where the text tower
    pools). Unknown words become `<unk>` (1).
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self.hf = _hf_tokenizer(context_length)
        self.pad_id, self.eos_id = self.hf.pad_token_id, self.hf.eos_token_id
        self.unk_id = self.hf.unk_token_id
        self.vocab_size = len(self.hf)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = self.hf(list(texts), padding="max_length", max_length=self.context_length, truncation=True,
                      return_tensors="pt").input_ids  # fmt: skip
        return ids.long()


def _config() -> dict:
    tokenizer = ShapesTokenizer()
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 192, "layers": 6, "head_width": 32},
        "text_cfg": {
            "context_length": tokenizer.context_length,
            "vocab_size": tokenizer.vocab_size,
            "width": 128,
            "heads": 4,
            "layers": 4,
            "pad_id": tokenizer.pad_id,
            "eos_id": tokenizer.eos_id,
            "pool_type": "eos",  # read the feature at the first </s> (id 2), not at the highest id
        },
    }


# ViT 6 × 192 (patch 8 at 128 px: 256 patches + class token), text 4 × 128 over 32 tokens, 128-d embedding:
# 3.61 M parameters, 6.9 MiB in fp16.
CLIP_CONFIG: dict = _config()


def register_shapes_clip() -> str:
    """Register `CLIP_CONFIG` with open_clip as "shapes-clip" (idempotent); returns the name."""
    import open_clip

    if open_clip.get_model_config(MODEL_NAME) == CLIP_CONFIG:
        return MODEL_NAME
    # open_clip's registry reads configs from .json files (`add_model_config` takes a path); the entries it reads stay
    # registered after the file is gone (later rescans only add), so a temporary file is enough
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{MODEL_NAME}.json"
        path.write_text(json.dumps(CLIP_CONFIG))
        open_clip.add_model_config(path)
    if open_clip.get_model_config(MODEL_NAME) != CLIP_CONFIG:
        raise RuntimeError(f"open_clip did not register {MODEL_NAME!r}")
    return MODEL_NAME


def build_shapes_clip() -> torch.nn.Module:
    """A fresh (randomly initialized, fp32) shapes-clip model, built through open_clip's factory."""
    import open_clip

    root = logging.getLogger()
    quiet = _DropMessage("No pretrained weights loaded")  # expected here: the weights come later or not at all
    root.addFilter(quiet)
    try:
        return open_clip.create_model(register_shapes_clip())
    finally:
        root.removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def preprocess(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] → (B, 3, size, size) normalized model input, with differentiable torch ops.

    The same steps as open_clip's eval transform (`Resize(size)` of the shorter side, bicubic; `CenterCrop(size)`;
    `Normalize(mean, std)`), with torch's antialiased bicubic in place of PIL's. Images already `size` × `size` are
    only normalized.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        # torchvision's Resize(int): the shorter side becomes `size`, the longer int(size * long / short)
        new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        images = images.clamp(0.0, 1.0)  # PIL stores the resized image as uint8: no overshoot
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        images = images[..., top : top + size, left : left + size]
    mean = torch.tensor(MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def save_shapes_clip(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the model's weights (cast to `dtype`) as a safetensors file that `load_shapes_clip` reads."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"model": MODEL_NAME, "config": json.dumps(CLIP_CONFIG)})
    return path


SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "shapes" / "shapes_clip.safetensors"


def load_shapes_clip(
    path: str | Path | None = None, device: str | torch.device = "cpu", pretrained: bool = True
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], ShapesTokenizer]:
    """(model, preprocess, tokenizer) for shapes-clip: weights from `path`, else the shipped ones (pretrained=False:
    random init, for tests). The model is fp32, in eval mode, parameters frozen (gradients still reach the pixels)."""
    model = build_shapes_clip()
    if path is None and pretrained:
        if not SHIPPED_WEIGHTS.exists():
            raise FileNotFoundError(
                f"the shipped shapes CLIP weights are missing ({SHIPPED_WEIGHTS}); reinstall unbottle, or train them "
                "with examples/shapes/train_clip.py and pass path=..., or use pretrained=False for a random model"
            )
        path = SHIPPED_WEIGHTS
    if path is not None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        model.load_state_dict({k: v.float() for k, v in state.items()})  # strict: the architecture must match
    model = model.to(device).eval().requires_grad_(False)
    return model, preprocess, ShapesTokenizer(CLIP_CONFIG["text_cfg"]["context_length"])

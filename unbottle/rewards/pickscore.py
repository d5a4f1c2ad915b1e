"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP-H fine-tuned on human picks, through transformers.

Model: `transformers.CLIPModel` from "yuvalkirstain/PickScore_v1"; tokenizer and image transform from the processor
"laion/CLIP-ViT-H-14-laion2B-s32B-b79K" (as the PickScore README loads them). Raw score: `logit_scale.exp() * cos`
of the normalized embeddings (the official score, about 20-23). `unit = score / 30`: ReNO's PickScore loss is
`30 - score`, so `weight * (1 - unit)` is ReNO's loss divided by 30 (ReNO's lambda 0.05 is weight 1.5 here).

`path`: a local model folder, a hub id ("yuvalkirstain/PickScore_v1" or "hf-hub:..."; downloads), or None: the
default id from the local hub cache only. `processor`: a folder / hub id / processor object; default: the model
folder if it holds a tokenizer, else the laion processor (cache only unless `path` named a hub id).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .patch_embedding import patch_embeddings_as_matmuls
from .preprocess import ImagePreprocess
from .reward import EmbeddingReward
from .weights import HUB_PREFIX

MODEL_ID = "yuvalkirstain/PickScore_v1"
PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MAX_LENGTH = 77
UNIT_CEILING = 30.0  # ReNO's PickScore loss: 30 - score
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values


def _pooled(out: object) -> torch.Tensor:
    """transformers >= 5 returns an output object from get_*_features; 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _get(config: object, key: str) -> object:
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def transform_of(image_processor: object, image_size: int) -> ImagePreprocess:
    """A transformers CLIP image processor's eval transform in torch (PickScore's laion processor)."""
    if image_processor is None:
        return ImagePreprocess(size=image_size)
    crop = _get(image_processor, "crop_size") if _get(image_processor, "do_center_crop") is not False else None
    size = _get(image_processor, "size")
    edge = _get(size, "shortest_edge")
    crop_hw = (_get(crop, "height"), _get(crop, "width")) if crop is not None else (None, None)
    if None in crop_hw:
        crop_hw = (edge or image_size, edge or image_size)
    mean = tuple(_get(image_processor, "image_mean") or ImagePreprocess.mean)
    std = tuple(_get(image_processor, "image_std") or ImagePreprocess.std)
    resample = _get(image_processor, "resample")
    interpolation = _RESAMPLE.get(int(resample) if resample is not None else 3, "bicubic")
    size_hw = crop_hw[0] if crop_hw[0] == crop_hw[1] else (int(crop_hw[0]), int(crop_hw[1]))
    return ImagePreprocess(size=size_hw, mean=mean, std=std, interpolation=interpolation, shortest_edge=edge)


class PickScoreReward(EmbeddingReward):
    """PickScore (Kirstain et al. 2023): raw `logit_scale.exp() * cos` of a transformers CLIPModel, unit = score/30."""

    name = "pickscore"

    def __init__(self, model: torch.nn.Module, tokenizer: object, transform: ImagePreprocess,
                 max_length: int = MAX_LENGTH) -> None:  # fmt: skip
        super().__init__(transform)
        self.model = model
        patch_embeddings_as_matmuls(self.model)  # cheap pixel gradients (see patch_embedding.py)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.freeze()

    @property
    def scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))  # (B, D)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)  # (N, L)
        return _pooled(self.model.get_text_features(input_ids=ids, attention_mask=mask))  # (N, D)

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """logit_scale·cos → score / 30 (ReNO's PickScore loss is 30 − score)."""
        return scores / UNIT_CEILING


def _source(ref: str | Path | None, default: str, what: str, hint: str) -> tuple[str, bool]:
    """(from_pretrained argument, may download) for a folder / hub id / None (default id, local cache only)."""
    if ref is None:
        return default, False
    ref = str(ref)
    if ref.startswith(HUB_PREFIX):
        return ref[len(HUB_PREFIX) :].strip("/"), True
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser()), False
    if _HUB_ID.fullmatch(ref) and not Path(ref).expanduser().exists():
        return ref, True  # "owner/name": a hub id, as transformers reads it
    raise FileNotFoundError(f"pickscore: no such folder {ref!r}; expected {what} ({hint})")


def _from_pretrained(
    cls: type, ref: str, download: bool, cache_dir: str | Path | None, what: str, hint: str, arg: str
) -> object:
    try:
        return cls.from_pretrained(ref, local_files_only=not download, cache_dir=cache_dir)
    except OSError as error:
        if download:
            raise FileNotFoundError(f"pickscore: {what} {ref!r} could not be loaded; {hint}") from error
        raise FileNotFoundError(
            f"pickscore: {what} {ref!r} is not available locally (not a folder, not in the hub cache); {hint}, "
            f"or {arg}='hf-hub:{ref}' to download it"
        ) from error


def load_pickscore(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    processor: str | Path | object | None = None,
    cache_dir: str | Path | None = None,
    max_length: int = MAX_LENGTH,
) -> PickScoreReward:
    """Load the "pickscore" reward: PickScore (Kirstain et al. 2023), a transformers CLIPModel; offline by default."""
    from transformers import AutoProcessor, CLIPModel

    model_hint = f"pass path= a local folder of the PickScore CLIPModel (from huggingface.co/{MODEL_ID})"
    ref, download = _source(path, MODEL_ID, "a PickScore CLIPModel folder", f"from huggingface.co/{MODEL_ID}")
    model = _from_pretrained(CLIPModel, ref, download, cache_dir, "PickScore model", model_hint, "path")

    if (
        processor is None
        and Path(ref).is_dir()
        and any((Path(ref) / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))
    ):
        processor = ref  # the model folder carries its own tokenizer / processor
    if processor is None or isinstance(processor, (str, Path)):
        proc_hint = f"pass processor= a local folder of the CLIP processor (from huggingface.co/{PROCESSOR_ID})"
        proc_ref, proc_download = _source(processor, PROCESSOR_ID, "a CLIP processor folder", proc_hint)
        processor = _from_pretrained(
            AutoProcessor, proc_ref, proc_download or download, cache_dir, "CLIP processor", proc_hint, "processor"
        )
    tokenizer = getattr(processor, "tokenizer", processor)
    image_size = int(model.config.vision_config.image_size)
    transform = transform_of(getattr(processor, "image_processor", None), image_size)
    model = model.to(device=device or "cpu", dtype=dtype)
    return PickScoreReward(model, tokenizer, transform, max_length)

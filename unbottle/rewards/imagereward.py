"""ImageReward (Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation").

Needs the optional package `image-reward` (module `ImageReward`): `pip install image-reward`. Its official `score()`
opens a PIL file and returns `.item()`, so it is not differentiable; the tensor path here runs the same modules on
a tensor: BLIP's ViT-L `visual_encoder` on the 224 px CLIP-normalized image → the BERT `text_encoder` over the prompt
(max 35 tokens) cross-attending to the image tokens → the CLS feature → `mlp` → `(r - mean) / std`, the package's
normalization (mean 0.16717362830052426, std 1.0333394966054072). Raw score: that normalized reward (about N(0, 1)
over SD 1.4 images). `unit = (r + 3) / 6`, CARINOX's normalization (its loss is `1 - (r + 3) / 6`).

Weights: `ImageReward.pt` + `med_config.json` (huggingface.co/THUDM/ImageReward): `path` = the .pt file (the config
next to it, or `med_config=`), a folder holding both, or "hf-hub:THUDM/ImageReward" (downloads); None: both files
in `download_root` (default ~/.cache/ImageReward, where the package keeps them). The model is built directly, not
through `ImageReward.load` (which always contacts the hub); the package's BLIP still loads the `bert-base-uncased`
tokenizer through transformers (from the local cache once it has been fetched).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .patch_embedding import patch_embeddings_as_matmuls
from .preprocess import ImagePreprocess
from .reward import Reward
from .weights import WeightsFile, hub_download, is_hub_id, require, split_hub_id

MEAN = 0.16717362830052426  # ImageReward's reward normalization (ImageReward.mean / .std)
STD = 1.0333394966054072
MAX_LENGTH = 35  # text tokens, as the package's score()
IMAGE_SIZE = 224
REPO = "THUDM/ImageReward"
CHECKPOINT = WeightsFile("imagereward", "ImageReward.pt", REPO)
MED_CONFIG = "med_config.json"
DEFAULT_ROOT = Path("~/.cache/ImageReward")


def imagereward_score(
    blip: torch.nn.Module,
    mlp: torch.nn.Module,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mean: float = MEAN,
    std: float = STD,
) -> torch.Tensor:
    """ImageReward's reward on tensors (Xu et al. 2023): (B, 3, 224, 224) normalized images, (B, L) tokens → (B,)."""
    image_embeds = blip.visual_encoder(pixel_values)  # (B, 1 + N, D) image tokens
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)  # (B, 1 + N)
    out = blip.text_encoder(
        input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts,
        return_dict=True,
    )
    features = out.last_hidden_state[:, 0, :]  # (B, 768): the CLS token after cross-attention
    first = next(mlp.parameters(), None)
    reward = mlp(features.to(first.dtype if first is not None else features.dtype)).float().squeeze(-1)  # (B,)
    return (reward - mean) / std


class ImageRewardReward(Reward):
    """ImageReward (Xu et al. 2023), differentiable: raw normalized reward r, unit = (r + 3) / 6 (CARINOX)."""

    name = "imagereward"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object | None = None,
        transform: ImagePreprocess | None = None,
        max_length: int = MAX_LENGTH,
    ) -> None:
        super().__init__()
        self.model = model  # an ImageReward module: .blip (visual_encoder, text_encoder, tokenizer), .mlp, .mean, .std
        patch_embeddings_as_matmuls(self.model)  # cheap pixel gradients (see patch_embedding.py)
        self.tokenizer = tokenizer if tokenizer is not None else model.blip.tokenizer
        self.transform = transform or ImagePreprocess(size=IMAGE_SIZE)
        self.max_length = max_length
        self.mean = float(getattr(model, "mean", MEAN))
        self.std = float(getattr(model, "std", STD))
        self.freeze()

    def tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 35) input ids and attention mask (ImageReward's tokenization), cached per prompt string."""

        def encode(new: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            t = self.tokenizer(new, padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")  # fmt: skip
            return list(zip(t["input_ids"], t["attention_mask"], strict=True))

        entries = self.cached_text(prompts, encode)
        ids = torch.stack([e[0] for e in entries]).to(self.device)  # (B, L)
        mask = torch.stack([e[1] for e in entries]).to(self.device)  # (B, L)
        return ids, mask

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], prompts → (B,) float32 normalized ImageReward (ImageReward, Xu et al. 2023)."""
        x = self.transform(self.pixels(images)).to(self.dtype)  # (B, 3, 224, 224)
        ids, mask = self.tokens(self.prompt_list(prompts, x.shape[0]))
        return imagereward_score(self.model.blip, self.model.mlp, x, ids, mask, self.mean, self.std)

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """r → (r + 3) / 6 (CARINOX)."""
        return (scores + 3.0) / 6.0


def _missing(what: str, hint: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"imagereward: {what}; {hint} (ImageReward.pt and {MED_CONFIG} from huggingface.co/{REPO}), "
        f"or path='hf-hub:{REPO}' to download them"
    )


def checkpoint_files(
    path: str | Path | None,
    med_config: str | Path | None = None,
    download_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[str, str]:
    """(ImageReward.pt, med_config.json) local paths for `path` (None: `download_root`; "hf-hub:...": downloaded)."""
    root = Path(download_root or DEFAULT_ROOT).expanduser()
    config = Path(med_config).expanduser() if med_config is not None else None
    if config is not None and not config.is_file():
        raise _missing(f"no such file {str(med_config)!r}", f"pass med_config= the {MED_CONFIG}")
    if is_hub_id(path):
        repo, filename = split_hub_id(str(path))
        checkpoint = hub_download(repo, filename or CHECKPOINT.filename, cache_dir)
        return checkpoint, str(config or hub_download(repo, MED_CONFIG, cache_dir))
    if path is None:
        checkpoint = root / CHECKPOINT.filename
        if not checkpoint.is_file():
            raise _missing(f"{CHECKPOINT.filename} is not in {root}", "pass path= a local ImageReward.pt")
    else:
        checkpoint = Path(path).expanduser()
        if checkpoint.is_dir():
            checkpoint = checkpoint / CHECKPOINT.filename
        if not checkpoint.is_file():
            raise _missing(f"no such file {str(path)!r}", "pass path= a local ImageReward.pt or a folder with it")
    for candidate in (config, checkpoint.parent / MED_CONFIG, root / MED_CONFIG):
        if candidate is not None and candidate.is_file():
            return str(checkpoint), str(candidate)
    raise _missing(f"no {MED_CONFIG} next to {checkpoint} or in {root}", f"pass med_config= the {MED_CONFIG}")


def load_imagereward(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    med_config: str | Path | None = None,
    download_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> ImageRewardReward:
    """Load the "imagereward" reward: ImageReward-v1.0 (Xu et al. 2023) on the differentiable tensor path."""
    require("ImageReward", "image-reward", "the imagereward reward (ImageReward, Xu et al. 2023)")
    from ImageReward.ImageReward import ImageReward as ImageRewardModel

    checkpoint, config = checkpoint_files(path, med_config, download_root, cache_dir)
    device = torch.device(device or "cpu")
    model = ImageRewardModel(med_config=config, device=device)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)  # as the package does: the checkpoint omits unused BLIP heads
    model = model.to(device=device, dtype=dtype)
    return ImageRewardReward(model, model.blip.tokenizer)

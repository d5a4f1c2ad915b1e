"""The reward interface: a frozen module that scores (B, 3, H, W) images in [0, 1] against prompts, differentiably.

    reward = unbottle.load_reward("shapes-clip")
    score = reward(images, "a red circle")          # (B,) float32, the reward's own raw scale, higher = better
    loss = weight * (1 - reward.unit(score))        # CARINOX: each reward's r~ roughly in [0, 1]

Two layers: `Reward` (input checks, device handling, always-eval, frozen parameters) and `EmbeddingReward`, the
two-tower template (image embedding · cached text embedding, a cosine on some scale) that CLIPScore, HPSv2,
PickScore and shapes-clip share. Text features are computed once per prompt string, without gradients, and kept in a
small per-reward cache (cleared when the module is moved or cast).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

TEXT_CACHE_SIZE = 4096  # prompts whose text features a reward keeps (least recently used ones are dropped)


class Reward(torch.nn.Module):
    """A differentiable reward r(image, prompt) for reward-guided noise optimization (ReNO, CARINOX).

    Subclasses implement `forward` (raw score, (B,) float32, differentiable w.r.t. the pixels) and `unit` (raw score
    → r~ roughly in [0, 1], CARINOX's normalization, used as `loss = weight * (1 - unit(score))`). Parameters are
    frozen and the module stays in eval mode (`train()` is a no-op): a reward is never trained.
    """

    name: str = "reward"
    modality = "image"  # what it scores: "image" (B, 3, H, W) pixels, or "text" (`TextReward`)

    def __init__(self) -> None:
        super().__init__()
        self._text_cache: OrderedDict[str, object] = OrderedDict()

    # ------------------------------------------------------------------------------------------------- interface
    def forward(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] and one prompt per image (a str broadcasts) → (B,) float32 raw score (ReNO)."""
        raise NotImplementedError

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """Raw score → r~ roughly in [0, 1] (CARINOX's per-reward normalization)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------------- module
    def train(self, mode: bool = True) -> Reward:
        """Rewards stay in eval mode (dropout off, fixed statistics) whatever a parent module asks (ReNO)."""
        return super().train(False)

    def freeze(self) -> Reward:
        """Freeze every parameter and switch to eval mode; returns self (ReNO / CARINOX freeze their rewards)."""
        self.requires_grad_(False)
        return super().train(False)

    def _apply(self, fn: Callable, recurse: bool = True) -> Reward:
        self._text_cache.clear()  # cached text features follow the old device / dtype: recompute them
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        """Where the reward's weights live (first parameter or buffer; CPU if none); images are moved there (ReNO)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the reward's floating-point weights (float32 if none; ReNO / CARINOX run rewards in fp16)."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    # --------------------------------------------------------------------------------------------------- helpers
    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Check (B, 3, H, W) float images in [0, 1] (ReNO's decoded images) and move them to the device as float32."""
        if images.ndim == 3:
            images = images[None]  # (1, 3, H, W)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected (B, 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"{self.name}: images must be a float tensor in [0, 1], got dtype {images.dtype} "
                "(for uint8 pixels divide by 255)"
            )
        return images.to(device=self.device, dtype=torch.float32)  # (B, 3, H, W), differentiable copy

    def prompt_list(self, prompts: Sequence[str] | str, batch: int) -> list[str]:
        """One prompt per image (CLIPScore pairs): a single str (or 1-list) repeats; otherwise `batch` entries."""
        if isinstance(prompts, str):
            return [prompts] * batch
        prompts = list(prompts)
        if len(prompts) == 1 and batch > 1:
            return prompts * batch
        if len(prompts) != batch or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{self.name}: expected one prompt (str) per image: {batch} images, got {len(prompts)}")
        return prompts

    def cached_text(self, prompts: list[str], encode: Callable[[list[str]], object]) -> list[object]:
        """Per-prompt text cache: `encode(new)` runs once per distinct prompt, no grad (ReNO re-encodes every step)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                encoded = encode(missing)
            for prompt, entry in zip(missing, encoded, strict=True):
                self._text_cache[prompt] = entry
        for prompt in dict.fromkeys(prompts):
            self._text_cache.move_to_end(prompt)
        out = [self._text_cache[p] for p in prompts]
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class TextReward(Reward):
    """A reward on generated texts, for exploration over diffusion-LM samples (CARINOX's best-of-N; verifiers).

    `forward(texts, prompts)` → (B,) float32, higher = better; not differentiable (texts are discrete), so noise
    search uses it for exploration only. `modality` tells the search which output to score.
    """

    modality = "text"

    def forward(self, texts: Sequence[str] | str, prompts: Sequence[str] | str) -> torch.Tensor:
        """B generated texts and one prompt per text (a str broadcasts) → (B,) float32 score."""
        raise NotImplementedError

    def text_list(self, texts: Sequence[str] | str) -> list[str]:
        """The generated texts as a list of str (one str is one text)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{self.name}: expected generated texts (str), got {[type(t).__name__ for t in texts]}")
        return texts


class EmbeddingReward(Reward):
    """Two-tower reward: `scale * cos(image embedding, text embedding)` (CLIPScore, HPSv2, PickScore, shapes-clip).

    Subclasses provide `encode_image` ((B, 3, h, w) normalized input → (B, D)), `encode_text` (list of prompts →
    (N, D)) and the image transform; `scale` multiplies the cosine into the raw score.
    """

    scale: float = 1.0

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalized input → (B, D) image embeddings (CLIPScore's image tower)."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """N prompts → (N, D) text embeddings (CLIPScore's text tower)."""
        raise NotImplementedError

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """(B, D) float32 unit-norm text embeddings (CLIPScore's text side), cached per prompt, without grad."""

        def encode(new: list[str]) -> torch.Tensor:
            return F.normalize(self.encode_text(new).float(), dim=-1)  # (N, D)

        return torch.stack(self.cached_text(prompts, encode)).to(self.device)  # (B, D)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, D) float32 unit-norm image embeddings (CLIPScore's image side), with grad."""
        x = self.transform(self.pixels(images))  # (B, 3, h, w) float32, normalized
        return F.normalize(self.encode_image(x.to(self.dtype)).float(), dim=-1)  # (B, D)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """(B,) float32 cosine similarity of each image with its prompt (CLIPScore's core)."""
        image_f = self.image_features(images)  # (B, D)
        text_f = self.text_features(self.prompt_list(prompts, image_f.shape[0]))  # (B, D)
        return (image_f * text_f).sum(-1)  # (B,)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], prompts → (B,) float32 `scale * cos` (CLIPScore / HPSv2 / PickScore)."""
        return self.cosine(images, prompts) * float(self.scale)

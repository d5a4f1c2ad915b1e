"""Per-token object labels of shapes captions, and the text encoder's auxiliary head that predicts them.

A diffusion loss alone teaches a small text encoder little about *which* words belong together: the shapes v1/v2
models drew single objects right but bound colours to the wrong shape a third of the time and placed related objects
at chance. So the text encoder also learns, on every word of an object's phrase ("a small striped red circle"), to
predict that object's colour, shape, named size and texture, its side of the caption's relation ("left of" for the
subject of "A to the left of B", "right of" for B), its motion and its count. The token states the DiT's cross-
attention reads then each carry their whole object, bound. Labels come from the caption's words alone (what the text
says, not unnamed scene facts); words outside a phrase ("to the left of", "and", the end token) are ignored.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from unbottle.shapes.captions import mention_word_spans, parse_caption
from unbottle.shapes.world import COLORS, MOTIONS, NUMBERS, RELATIONS, SHAPES, SIZES, TEXTURES

IGNORE = -100
FIELDS: dict[str, tuple] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": tuple(s for s in SIZES if s != "medium"),  # captions never name "medium"
    "texture": TEXTURES,
    "role": ("none", *RELATIONS),  # the mention's side of the relation; "none" in captions without one
    "motion": ("none", *MOTIONS),
    "count": tuple(NUMBERS),
}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def caption_labels(text: str, length: int) -> np.ndarray:
    """(len(FIELDS), length) int8 class labels of each token (word i = token i), IGNORE where a field is unnamed."""
    spec, spans = parse_caption(text), mention_word_spans(text)
    labels = np.full((len(FIELDS), length), IGNORE, dtype=np.int8)
    for i, (mention, (start, end)) in enumerate(zip(spec.mentions, spans, strict=True)):
        role = "none" if spec.relation is None else spec.relation if i == 0 else INVERSE[spec.relation]
        values = {"color": mention.color, "shape": mention.shape, "size": mention.size, "texture": mention.texture,
                  "role": role, "motion": mention.motion or "none", "count": spec.count}  # fmt: skip
        for f, (name, classes) in enumerate(FIELDS.items()):
            if values[name] is not None:
                labels[f, start : min(end, length)] = classes.index(values[name])
    return labels


def bank_labels(captions: list[str], length: int) -> torch.Tensor:
    """(N, len(FIELDS), length) int8 labels of a bank's captions (computed once per distinct caption)."""
    cache: dict[str, np.ndarray] = {}
    rows = [cache[c] if c in cache else cache.setdefault(c, caption_labels(c, length)) for c in captions]
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, len(FIELDS), length, dtype=torch.int8)


class CaptionLabelHead(torch.nn.Module):
    """A linear read-out of every field from the text encoder's token states (B, L, D)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.sizes = [len(classes) for classes in FIELDS.values()]
        self.proj = torch.nn.Linear(width, sum(self.sizes))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over fields of the cross-entropy on the tokens that field labels (0 for a field unused here);
        `hidden` (B, L, D), `labels` (B, len(FIELDS), L)."""
        logits = self.proj(hidden.float()).split(self.sizes, dim=-1)  # per field (B, L, classes)
        total = hidden.new_zeros((), dtype=torch.float32)
        for f, field_logits in enumerate(logits):  # no boolean indexing: no host sync in the training step
            target = labels[:, f, : hidden.shape[1]].long()  # (B, L)
            flat = field_logits.flatten(0, 1)  # (B·L, classes)
            summed = F.cross_entropy(flat, target.flatten(), ignore_index=IGNORE, reduction="sum")
            total = total + summed / (target != IGNORE).sum().clamp_min(1)
        return total / len(self.sizes)

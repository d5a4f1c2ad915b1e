"""`shapes-retrieval`: a programmatic verifier of the shapes DLM's answers, a text reward for best-of-N exploration.

The shapes retrieval prompts (`unbottle.shapes.retrieval`) carry their own answer: the queried key's record is in the
document. The verifier reads it back (`retrieval.answer_of`) and scores a generated text 1.0 when its words are
exactly the record's value, else 0.0 (also 0.0 for a prompt that is not a retrieval prompt). Like a unit test on
generated code, it is a reward that needs no model; it makes exploration (the best of N sampled generations, as in
CARINOX's exploration) measurable on the embedded diffusion LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .reward import TextReward


class RetrievalVerifierReward(TextReward):
    """1.0 when a generated answer is exactly the queried record's value in the prompt, else 0.0 (CARINOX search)."""

    name = "shapes-retrieval"

    def forward(self, texts: Sequence[str] | str, prompts: Sequence[str] | str) -> torch.Tensor:
        """Generated answers and their retrieval prompts → (B,) float32 in {0, 1}."""
        from ..shapes.retrieval import answer_of

        texts = self.text_list(texts)
        prompts = self.prompt_list(prompts, len(texts))
        answers = [answer_of(p) for p in prompts]
        right = [a is not None and t.split() == a.split() for t, a in zip(texts, answers, strict=True)]
        return torch.tensor(right, dtype=torch.float32)  # (B,)

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        """Already in [0, 1] (CARINOX's r~)."""
        return scores


def load_shapes_retrieval_reward(
    path: str | Path | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
) -> RetrievalVerifierReward:  # fmt: skip
    """The shapes retrieval verifier (no weights: `path` must be None)."""
    if path is not None:
        raise ValueError(f"shapes-retrieval is a programmatic verifier and takes no path, got path={path!r}")
    return RetrievalVerifierReward()

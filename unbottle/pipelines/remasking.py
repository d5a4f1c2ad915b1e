"""Masked-diffusion commit rules (LLaDA, Nie et al. 2025): the linear schedule, x0 sampling, remasking confidence.

One denoising step of a block predicts x0 at its masked positions (argmax at temperature 0, else Gumbel-max sampling
from softmax(logits / T)), scores each prediction (`low_confidence`: the softmax probability of the chosen token;
`random`: a uniform draw), and commits the k highest-scoring masked positions; the rest stay masked (are "remasked").
k follows the linear schedule: a block's masked count split evenly over its steps, the remainder to the first steps.

Randomness is drawn per row from that row's own `torch.Generator`, so a row's tokens do not depend on which other rows
share its batch. Scores and probabilities are computed in float64 (float32 on MPS, which has no float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

REMASKING = ("low_confidence", "random")


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (CPU, CUDA), float32 on MPS: the dtype of sampling scores and probabilities."""
    return torch.float32 if device.type == "mps" else torch.float64


def transfer_schedule(masked_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit at each of a block's `steps`: each row's masked count split evenly, remainder first (LLaDA)."""
    base = masked_counts // steps  # (B,)
    remainder = masked_counts % steps  # (B,)
    extra = torch.arange(steps, device=masked_counts.device)[None, :] < remainder[:, None]  # (B, steps)
    return base[:, None] + extra.long()  # (B, steps)


def _uniform(shape: tuple[int, ...], generators: Sequence[torch.Generator], device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """U[0, 1) of shape (B, *shape), row b drawn from generators[b] on its own device, then moved to `device`."""
    rows = [torch.rand(shape, generator=g, device=g.device, dtype=dtype).to(device) for g in generators]
    return torch.stack(rows)  # (B, *shape)


def sample_tokens(logits: torch.Tensor, temperature: float,
                  generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:  # fmt: skip
    """x0 predictions (B, N) from logits (B, N, V): argmax at temperature 0, else Gumbel-max at `temperature` (LLaDA).

    LLaDA's exp(l) / (−log u)^T has the argmax of l − T·log(−log u), computed here in log space (no overflow)."""
    if temperature == 0.0:
        return logits.argmax(-1)  # (B, N)
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError("sampling at temperature > 0 needs one generator per row")
    dtype = precise_dtype(logits.device)
    u = _uniform(tuple(logits.shape[1:]), generators, logits.device, dtype)  # (B, N, V)
    scores = logits.to(dtype) - temperature * torch.log(-torch.log(u))  # (B, N, V); u = 0 scores −inf
    return scores.argmax(-1)  # (B, N)


def confidence(logits: torch.Tensor, tokens: torch.Tensor, remasking: str,
               generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:  # fmt: skip
    """Each prediction's score (B, N): softmax p(token) (`low_confidence`) or a uniform draw (`random`), per LLaDA."""
    if remasking == "low_confidence":
        probs = logits.to(precise_dtype(logits.device)).softmax(-1)  # (B, N, V)
        return probs.gather(-1, tokens[..., None])[..., 0]  # (B, N)
    if remasking == "random":
        if generators is None or len(generators) != logits.shape[0]:
            raise ValueError("random remasking needs one generator per row")
        return _uniform((logits.shape[1],), generators, logits.device, precise_dtype(logits.device))  # (B, N)
    raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")


def select_transfer(scores: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Positions to commit (B, N): each row's `counts[b]` highest-scoring masked positions (ties: lowest index)."""
    scores = scores.masked_fill(~masked, float("-inf"))  # (B, N): committed positions never win
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)  # (B, N)
    rank = order.argsort(-1)  # (B, N): 0 = the best position of the row
    return (rank < counts[:, None]) & masked  # (B, N)

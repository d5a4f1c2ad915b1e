"""An exponential moving average of model parameters (fp32 shadow copies), with the usual warm-up of the decay."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """Shadow weights `s ← s + (1 − d)·(p − s)`, d = min(decay, (1 + k) / (10 + k)) at update k."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, updates: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay = {decay}; allowed: 0 ≤ decay < 1")
        self.params, self.decay, self.updates = params, decay, updates
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside: the parameters hold the shadow weights (copied in place); after: their own again."""
        backup = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = [s.to(p.device, torch.float32) for s, p in zip(state["shadow"], self.params, strict=True)]

"""The reward registry: name → loader, `load_reward`, and the CLI's "NAME[:WEIGHT],..." syntax (ReNO, CARINOX).

    reward = unbottle.load_reward("hps", path="HPS_v2.1_compressed.pt", device="cuda", dtype=torch.float16)
    weights = parse_rewards("hps:5,imagereward:5")        # {"hps": 5.0, "imagereward": 5.0}
    register_reward("mine", lambda path=None, device=None, dtype=None, **kw: MyReward(...))

A loader is called as `loader(path=path, device=device, dtype=dtype, **kwargs)` and returns a `Reward`; the result
is frozen, in eval mode, and named after its registry entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from .aesthetic import load_aesthetic
from .clip import load_clip
from .hps import load_hps
from .imagereward import load_imagereward
from .pickscore import load_pickscore
from .reward import Reward
from .shapes_clip import load_shapes_clip_reward
from .shapes_retrieval import load_shapes_retrieval_reward

RewardLoader = Callable[..., Reward]

# Name of the reward used when none is given: the offline shapes CLIP model shipped with the package.
DEFAULT = "shapes-clip"

REWARDS: dict[str, RewardLoader] = {
    "shapes-clip": load_shapes_clip_reward,
    "clip": load_clip,
    "hps": load_hps,
    "pickscore": load_pickscore,
    "imagereward": load_imagereward,
    "aesthetic": load_aesthetic,
    "shapes-retrieval": load_shapes_retrieval_reward,  # a text reward: verifies the shapes DLM's answers
}


def _key(name: str) -> str:
    return str(name).strip().lower()


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(REWARDS)}")


def register_reward(name: str, loader: RewardLoader, *, replace: bool = False) -> None:
    """Add a reward to the registry (ReNO / CARINOX style reward plug-in); `replace=True` to override a name."""
    key = _key(name)
    if not key or "," in key or ":" in key:
        raise ValueError(f"a reward name must be non-empty, without ',' or ':', got {name!r}")
    if not callable(loader):
        raise TypeError(f"loader for {name!r} must be callable, got {type(loader).__name__}")
    if key in REWARDS and not replace:
        raise ValueError(f"reward {key!r} is already registered; pass replace=True to override it")
    REWARDS[key] = loader


def load_reward(
    name: str,
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: object,
) -> Reward:
    """Load a registered differentiable reward (CARINOX / ReNO rewards; `DEFAULT` = the offline shapes CLIP).

    path: the reward's weights (a local file / folder, or "hf-hub:..." to download); None: the reward's default,
    from the package or the local hub cache only. device: default CPU; dtype: default the weights' own (fp32).
    Extra keyword arguments go to the loader (model_name=, cache_dir=, grad_checkpointing=, ...).
    """
    key = _key(name)
    if key not in REWARDS:
        raise _unknown(name)
    reward = REWARDS[key](path=path, device=device, dtype=dtype, **kwargs)
    if not isinstance(reward, Reward):
        raise TypeError(f"the loader of {key!r} returned {type(reward).__name__}, not a unbottle Reward")
    reward.name = key
    return reward.freeze()


def parse_rewards(spec: str) -> dict[str, float]:
    """Parse the CLI's "NAME[:WEIGHT],..." (weight 1 when omitted) into {name: weight} (CARINOX's lambda_i)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected rewards as NAME[:WEIGHT],... (e.g. 'clip:2,hps'), got {spec!r}")
    weights: dict[str, float] = {}
    for item in spec.split(","):
        name, colon, value = item.strip().partition(":")
        key = _key(name)
        if not key:
            raise ValueError(f"bad reward item {item.strip()!r} in {spec!r}: expected NAME[:WEIGHT]")
        if key not in REWARDS:
            raise ValueError(f"bad reward item {item.strip()!r}: unknown reward {name.strip()!r}; registered "
                             f"rewards: {', '.join(REWARDS)}")  # fmt: skip
        weight = 1.0
        if colon:
            try:
                weight = float(value)
            except ValueError:
                raise ValueError(
                    f"bad reward item {item.strip()!r}: weight {value.strip()!r} is not a number"
                ) from None
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"bad reward item {item.strip()!r}: the weight must be a finite number > 0")
        if key in weights:
            raise ValueError(f"bad reward item {item.strip()!r}: reward {key!r} is given twice in {spec!r}")
        weights[key] = weight
    return weights

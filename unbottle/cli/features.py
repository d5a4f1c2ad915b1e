"""Feature flags of the CLI, mapped to the public API they need; a flag whose feature has not landed is refused."""

from __future__ import annotations

import argparse

import unbottle

from .._pending import pending_reason
from .errors import UsageError

# flag (argparse dest) -> (the option as typed, the public object(s) the flag needs)
FLAG_FEATURES: dict[str, tuple[str, object]] = {
    "sparse": ("--sparse", unbottle.enable_sparse_attention),
    "bottleneck": ("--bottleneck", unbottle.BottleneckSampler),
    "structured": ("--structured", unbottle.enable_structured_guidance),
    "rewards": ("--rewards", unbottle.load_reward),
    # without --rewards, the search loads the default reward (unbottle.rewards.DEFAULT)
    "explore": ("--explore", (unbottle.NoiseSearch, unbottle.load_reward)),
    "optimize": ("--optimize", (unbottle.NoiseSearch, unbottle.load_reward)),
}


def refuse_unavailable(option: str, needed: object) -> None:
    """Raise a UsageError if `needed` is a stand-in for a feature that has not landed yet."""
    reason = pending_reason(needed)
    if reason is not None:
        feature, issue = reason
        raise UsageError(f"{option}: {feature} is not available yet (issue #{issue})")


def check_feature_flags(args: argparse.Namespace) -> None:
    """Refuse, before any model is loaded, every flag given whose feature is not available yet; check option mixes."""
    for dest, (option, needed) in FLAG_FEATURES.items():
        value = getattr(args, dest, None)
        if value not in (None, False):
            for obj in needed if isinstance(needed, tuple) else (needed,):
                refuse_unavailable(option, obj)
    from .noise import check_noise_args

    check_noise_args(args)

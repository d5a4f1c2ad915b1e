"""Differentiable rewards on images in [0, 1]: CLIP, HPS, PickScore, ImageReward, aesthetic, shapes CLIP (issue #8)."""

from .._pending import pending_function

_FEATURE = "rewards"

# Name of the reward used when none is given: the offline shapes CLIP model (issue #4 trains it).
DEFAULT = "shapes-clip"

load_reward = pending_function("load_reward", _FEATURE, 8)
category_rewards = pending_function("category_rewards", "category-aware reward weights", 8)

__all__ = ["DEFAULT", "category_rewards", "load_reward"]

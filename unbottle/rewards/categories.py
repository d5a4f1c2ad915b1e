"""Category-aware reward weights (CARINOX, Kasaei et al., arXiv 2509.17458): which rewards to trust for which prompt.

Data: Pearson r between each reward and human judgement on the T2I-CompBench++ human-evaluation set (8 categories
× 300 images, 6 generators), from the CARINOX authors' correlation study (companion paper "Evaluating the
Evaluators", arXiv 2509.21227), restricted to the rewards implemented here (HPS, ImageReward, CLIP, PickScore; the
LAION aesthetic score correlates at r <= 0.195 everywhere and is left out). "overall" is the study's pooled row over
six categories.

Derivation (ours; CARINOX publishes weights but not how they were derived): keep the rewards whose r reaches
`floor` (default 0.3, the conventional threshold of a moderate correlation; the best reward is always kept), and
weight them in proportion to r, normalized so the weights sum to the number kept (mean weight 1, like the rows of
CARINOX's published weight table, which sum to about 4 over its 4 rewards). The weights multiply the loss
`weight * (1 - unit(score))` of each reward.
"""

from __future__ import annotations

from types import MappingProxyType

# Pearson r with human ratings, T2I-CompBench++ human-eval set (CARINOX correlation notebook, see above).
CORRELATIONS: MappingProxyType = MappingProxyType(
    {
        "color": {"hps": 0.240, "imagereward": 0.585, "clip": 0.275, "pickscore": 0.227},
        "shape": {"hps": 0.457, "imagereward": 0.555, "clip": 0.276, "pickscore": 0.263},
        "texture": {"hps": 0.555, "imagereward": 0.737, "clip": 0.530, "pickscore": 0.492},
        "spatial": {"hps": 0.431, "imagereward": 0.403, "clip": 0.345, "pickscore": 0.314},
        "non_spatial": {"hps": 0.623, "imagereward": 0.543, "clip": 0.651, "pickscore": 0.558},
        "complex": {"hps": 0.355, "imagereward": 0.496, "clip": 0.349, "pickscore": 0.205},
        "3d_spatial": {"hps": 0.460, "imagereward": 0.405, "clip": 0.306, "pickscore": 0.175},
        "numeracy": {"hps": 0.495, "imagereward": 0.482, "clip": 0.210, "pickscore": 0.376},
        "overall": {"hps": 0.257, "imagereward": 0.440, "clip": 0.264, "pickscore": 0.063},
    }
)
CORRELATION_FLOOR = 0.3

# Other names of the T2I-CompBench++ categories.
ALIASES: MappingProxyType = MappingProxyType(
    {"2d_spatial": "spatial", "count": "numeracy", "counting": "numeracy", "nonspatial": "non_spatial"}
)
# The shapes evaluator's categories (`unbottle.shapes.evaluate.category`) → the nearest T2I-CompBench++ category:
# one object ("a red circle") is a test of the shape (and its colour); size/texture attributes → texture; two coloured
# objects → colour binding; counts → numeracy; relations → 2D spatial; motion (an action) → non-spatial.
SHAPES_CATEGORIES: MappingProxyType = MappingProxyType(
    {
        "single": "shape",
        "attribute": "texture",
        "color_binding": "color",
        "count": "numeracy",
        "spatial": "spatial",
        "motion": "non_spatial",
    }
)


def category_names() -> tuple[str, ...]:
    """Every accepted category name: T2I-CompBench++ categories (CARINOX table), aliases, shapes categories."""
    return tuple(dict.fromkeys([*CORRELATIONS, *ALIASES, *SHAPES_CATEGORIES]))


def compbench_category(category: str) -> str:
    """The CARINOX table row (T2I-CompBench++ category) of a name, e.g. "2d_spatial" → "spatial"."""
    key = str(category).strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    key = key if key in CORRELATIONS else SHAPES_CATEGORIES.get(key, key)
    if key not in CORRELATIONS:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(category_names())}")
    return key


def category_rewards(category: str, *, floor: float = CORRELATION_FLOOR) -> dict[str, float]:
    """Reward weights for a prompt category, from CARINOX's reward-human correlation table (arXiv 2509.17458).

    Rewards with Pearson r >= floor are kept (at least the best one), weighted ∝ r and normalized to sum to the
    number kept: e.g. "texture" → all four, ImageReward highest; "color" → ImageReward alone.
    """
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor!r}")
    row = CORRELATIONS[compbench_category(category)]
    kept = {name: r for name, r in row.items() if r >= floor}
    if not kept:
        best = max(row, key=row.get)
        kept = {best: row[best]}
    total = sum(kept.values())
    return {name: round(len(kept) * r / total, 4) for name, r in sorted(kept.items(), key=lambda kv: -kv[1])}

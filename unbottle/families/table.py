"""The README's family × feature table, generated from the registry: `python -m unbottle.families.table`."""

from __future__ import annotations

from .family import FEATURES, Family
from .registry import registered_families

START, END = "<!-- family-table:start -->", "<!-- family-table:end -->"  # where the README holds the table
_TITLES = {"sparse": "sparse attention", "bottleneck": "bottleneck", "noise": "noise search",
           "guidance": "structured guidance"}  # fmt: skip


def _row(family: Family) -> str:
    models = ", ".join(f"`{c}`" for c in family.model_classes) or "—"
    pipelines = ", ".join(f"`{c}`" for c in family.pipeline_classes) or "—"
    marks = " | ".join("✓" if family.supports(feature) else "" for feature in FEATURES)
    return f"| {family.name} | {models} | {pipelines} | {marks} |"


def feature_table(families: tuple[Family, ...] | None = None) -> str:
    """A markdown table: one row per family (its denoiser and pipeline classes), a ✓ per feature it supports."""
    families = registered_families() if families is None else families
    header = "| family | denoiser classes | pipeline classes | " + " | ".join(_TITLES[f] for f in FEATURES) + " |"
    rule = "|---|---|---|" + "---|" * len(FEATURES)
    return "\n".join([header, rule, *(_row(f) for f in families)])


def readme_block() -> str:
    """The table between the README's markers, as the README holds it."""
    return f"{START}\n{feature_table()}\n{END}"


if __name__ == "__main__":
    print(readme_block())

"""The README's family × feature table is the registry's: regenerate it with `python -m unbottle.families.table`."""

from __future__ import annotations

from pathlib import Path

import unbottle
from unbottle.families import Family, SelfAttention, TokenLayout
from unbottle.families.table import END, START, feature_table, readme_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, "the README must hold the table between its markers once"
    held = text[text.index(START) : text.index(END) + len(END)]
    assert held == readme_block(), "the README's family table is stale: python -m unbottle.families.table"


def test_table_rows_mark_what_each_family_supports():
    lines = feature_table().splitlines()
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    assert len(rows) == len(unbottle.families.registered_families())
    flux = [cell.strip() for cell in rows["Flux"].strip("|").split("|")]
    assert flux[1:3] == ["`FluxTransformer2DModel`", "`FluxPipeline`"] and flux[3:] == ["✓", "✓", "✓", ""]
    wan = [cell.strip() for cell in rows["Wan"].strip("|").split("|")]
    assert wan[3:] == ["✓", "✓", "✓", "✓"]
    cog = [cell.strip() for cell in rows["CogVideoX"].strip("|").split("|")]
    assert cog[3:] == ["✓", "", "", ""]


def test_a_family_of_one_feature_gets_one_mark():
    mine = Family("Mine", ("MyModel",), attention=SelfAttention(r"attn", lambda model, bound: TokenLayout()))
    (row,) = feature_table((mine,)).splitlines()[2:]
    assert row == "| Mine | `MyModel` | — | ✓ |  |  |  |"

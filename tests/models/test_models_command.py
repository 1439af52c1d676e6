"""`effdetseg models`: the table is counted from code, and the README carries the same table."""
from __future__ import annotations

import pytest


from effdetseg.commands.models import README_END, README_START, markdown_table, model_rows
from conftest import REPO

README = REPO / "README.md"


@pytest.mark.slow
def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    expected = markdown_table(model_rows(512))
    assert text[start:end].strip() == expected, "README model table is stale: run `effdetseg models --update-readme README.md`"
    assert "| efficientdet_d4_seg | efficientnet_b4 | 128 × 3 + top-down | 256 × 3 |" in expected
    # The options and their defaults come from the config class, so a changed default shows here.
    assert "`head_levels=1`" in expected and "`decoder_init=default`" in expected and "min_level" not in expected

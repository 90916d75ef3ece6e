"""Shared fixtures: tiny labelled data files and a tiny recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import sentiment_rows, tiny_recipe, write_csv


@pytest.fixture
def sentiment_files(tmp_path: Path) -> dict[str, str]:
    return {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(240, 1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(60, 2))),
        "test": str(write_csv(tmp_path / "test.csv", sentiment_rows(60, 3))),
    }


@pytest.fixture
def sentiment_recipe(tmp_path: Path, sentiment_files: dict[str, str]) -> dict[str, Any]:
    return tiny_recipe(tmp_path, data=dict(sentiment_files))

"""Shared fixtures (tiny labelled data files and a tiny recipe), and CI's rule that nothing skips.

Tests that need an oracle (``transformers``, ``seqeval``, ``sentencepiece``,
``sacrebleu``) or the shared data folder (``../shared``: datasets and
``models/all-minilm-l6-v2``) skip where it is missing, so that a developer
without them can still run the suite. In CI a skip would hide a feature that
was never checked: with ``NLPKIT_REQUIRE_ORACLES=1`` (``.ci/run`` sets it)
every skip, at collection (``pytest.importorskip`` at module level) or in a
test (``skipif`` markers, ``pytest.skip``, ``importorskip`` in the test), is
reported as a failure that names what was missing. Only tests marked
``@pytest.mark.gpu`` may still skip there. Expected failures (``xfail``) are
left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import sentiment_rows, tiny_recipe, write_csv

REQUIRE_ORACLES_ENV = "NLPKIT_REQUIRE_ORACLES"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a GPU; the only tests that may skip under NLPKIT_REQUIRE_ORACLES=1")


def _skips_forbidden() -> bool:
    return os.environ.get(REQUIRE_ORACLES_ENV, "") not in ("", "0")


def _fail_instead_of_skip(report: Any, node: pytest.Item | pytest.Collector) -> None:
    """Turn a skipped report into a failed one, in place, unless skipping is allowed for ``node``."""
    if not report.skipped or hasattr(report, "wasxfail") or node.get_closest_marker("gpu") is not None:
        return
    # A skip's longrepr is (file, line, "Skipped: reason").
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{reason}\n{REQUIRE_ORACLES_ENV}=1 makes this skip a failure: install the test extra "
                       f"(pip install -e '.[test]') and provide ../shared (datasets, models/all-minilm-l6-v2)")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if _skips_forbidden():
        _fail_instead_of_skip(report, collector)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if _skips_forbidden():
        _fail_instead_of_skip(report, item)
    return report


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

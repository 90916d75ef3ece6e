"""The classification plugin passes the conformance check that third-party plugins use (nlpkit.testing)."""

from __future__ import annotations

import pytest

from nlpkit.testing import check_task, tiny_classification_rows
from nlpkit_classification import Classification

CASES = {
    "single-label": ({}, None, {"label", "score", "scores"}),
    "sentence-pair": ({"pairs": True}, None, {"label", "score", "scores"}),
    "multi-label": ({"multi_label": True}, {"multi_label": True, "threshold": 0.4}, {"labels", "score", "scores"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_classification_passes_the_conformance_check(case, tmp_path):
    shape, options, answer_keys = CASES[case]
    train = tiny_classification_rows(16, seed=0, **shape)
    validation = tiny_classification_rows(8, seed=1, **shape)

    checked = check_task(Classification, train, validation, options=options, tmp_path=tmp_path)

    # The check really trained and loaded a run of this task, with these options.
    assert checked.run_dir.parent == tmp_path / "runs"
    assert {"val_loss", "val_accuracy", "val_macro_f1"} <= set(checked.metrics)
    assert len(checked.answers) == 4
    labels = {"same", "different"} if case == "sentence-pair" else {"pos", "neg"}
    for answer in checked.answers:
        assert set(answer) == answer_keys
        assert set(answer["scores"]) == labels
    if case == "multi-label":
        assert all(a["labels"] == [k for k, p in a["scores"].items() if p >= 0.4] for a in checked.answers)

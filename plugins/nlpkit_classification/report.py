"""The classification part of the run report: the confusion matrix, per-label scores, the most confused pairs."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nlpkit.tasks import Matrix, Prediction, ReportSection, Table


def _scores(true_positives: int, predicted: int, gold: int) -> list[float]:
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return [precision, recall, f1]


def classification_section(labels: list[str], gold_of: Any, multi_label: bool,
                           predictions: list[Prediction]) -> ReportSection:
    """The section of a classification run.

    Args:
        labels: the task's labels.
        gold_of: a row's ``label`` value -> its list of labels (``RowLabels.of``).
        multi_label: whether answers are label sets (no confusion matrix then).
        predictions: the saved validation predictions.
    """
    gold = [gold_of(p.example["label"]) for p in predictions]
    predicted = [p.prediction["labels"] if multi_label else [p.prediction["label"]] for p in predictions]
    hits: Counter[str] = Counter()
    guessed: Counter[str] = Counter()
    wanted: Counter[str] = Counter()
    for expected, got in zip(gold, predicted):
        wanted.update(expected)
        guessed.update(got)
        hits.update(set(expected) & set(got))
    rows = [[label, *_scores(hits[label], guessed[label], wanted[label]), wanted[label]] for label in labels]
    per_label = Table("Per-label precision, recall and F1", ["label", "precision", "recall", "F1", "support"], rows,
                      note="computed from the best model's answers to the validation examples")
    parts: list[Any] = []
    if not multi_label:
        index = {label: i for i, label in enumerate(labels)}
        counts = [[0] * len(labels) for _ in labels]
        for expected, got in zip(gold, predicted):
            counts[index[expected[0]]][index[got[0]]] += 1
        parts.append(Matrix("Confusion matrix", labels, labels, counts, row_title="reference", column_title="prediction",
                            note="rows: the reference label; columns: the predicted label; cells: validation examples"))
        confused = Counter((e[0], g[0]) for e, g in zip(gold, predicted) if e[0] != g[0])
        first_text: dict[tuple[str, str], str] = {}
        for p, e, g in zip(predictions, gold, predicted):
            first_text.setdefault((e[0], g[0]), p.example.get("text", ""))
        parts.append(Table("Most confused pairs", ["reference", "prediction", "examples", "for example"],
                           [[e, g, n, first_text[(e, g)]] for (e, g), n in confused.most_common(10)]))
    return ReportSection("Classification", [*parts[:1], per_label, *parts[1:]],
                         note=f"{len(predictions)} validation examples"
                              + ("; multi-label answers have no confusion matrix" if multi_label else ""))

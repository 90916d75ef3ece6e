"""The question-answering part of the run report: the answers that score worst, beside the gold answers."""

from __future__ import annotations

from nlpkit.tasks import Prediction, ReportSection, Table
from nlpkit_qa.data import gold_answers

_SHOWN = 20
_CONTEXT = 120  # characters of context shown on each side of the first gold answer


def _around(context: str, start: int, length: int) -> str:
    if start < 0:
        return context[: 2 * _CONTEXT] + (" …" if len(context) > 2 * _CONTEXT else "")
    first, last = max(0, start - _CONTEXT), min(len(context), start + length + _CONTEXT)
    return ("… " if first else "") + context[first:last] + (" …" if last < len(context) else "")


def qa_section(predictions: list[Prediction]) -> ReportSection:
    """Exact match and F1 of each saved answer (SQuAD's, as the metric scores them); the worst ones first."""
    from torchmetrics.functional.text import squad

    rows = []
    for i, p in enumerate(predictions):
        (texts, starts), = gold_answers({key: [value] for key, value in p.example.items()}) or [([""], [-1])]
        answer = str(p.prediction["answer"])
        score = squad([{"prediction_text": answer, "id": str(i)}],
                      [{"answers": {"text": texts, "answer_start": starts}, "id": str(i)}])
        rows.append((float(score["f1"]), float(score["exact_match"]), p, texts, starts, answer))
    worst = sorted(rows, key=lambda r: (r[0], r[1]))[:_SHOWN]
    mean = [sum(r[1] for r in rows) / len(rows), sum(r[0] for r in rows) / len(rows)] if rows else [None, None]
    totals = Table("Scores of the saved answers", ["exact match", "F1"], [mean],
                   note="SQuAD exact match and F1 (0-100) of the best model's answers to the validation questions")
    table = Table("Worst answers", ["F1", "exact match", "question", "gold answers", "answer", "context"],
                  [[f1, em, p.example["question"], " | ".join(texts), answer,
                    _around(str(p.example["context"]), starts[0], len(texts[0]))]
                   for f1, em, p, texts, starts, answer in worst],
                  note=f"the {len(worst)} answers (of {len(rows)}) with the lowest F1; the context around the first "
                       f"gold answer")
    return ReportSection("Question answering", [totals, table])

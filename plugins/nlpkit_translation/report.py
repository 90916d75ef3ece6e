"""The translation part of the run report: BLEU and chrF per validation, the worst-translated sentences."""

from __future__ import annotations

from typing import Any, cast

import torch

from nlpkit.tasks import Curves, Prediction, ReportSection, RunRecord, Table

_SHOWN = 20


def translation_section(predictions: list[Prediction], run: RunRecord, metrics: dict[str, Any],
                        lowercase: bool) -> ReportSection:
    """BLEU and chrF against steps, corpus scores of the saved translations and the worst sentences by chrF.

    Args:
        predictions: the saved validation translations.
        run: the run's history.
        metrics: the task's fresh ``bleu`` and ``chrf`` metrics (sacreBLEU's, 0-100).
        lowercase: the task's case-insensitive scoring, applied to the sentence scores too.
    """
    from torchmetrics.functional.text import chrf_score

    curves = Curves("BLEU and chrF per validation", {"BLEU": run.curve("val_bleu"), "chrF": run.curve("val_chrf")},
                    y_label="0-100")
    hypotheses = [str(p.prediction["translation"]) for p in predictions]
    references = [str(p.example["target"]) for p in predictions]
    corpus = []
    if predictions:
        for name, metric in metrics.items():
            metric.update(hypotheses, [[r] for r in references])
            corpus.append([name, float(metric.compute())])
    totals = Table("Scores of the saved translations", ["metric", "value"], corpus,
                   note="corpus scores of the best model's translations of the validation split, as in val_bleu / "
                        "val_chrf")
    def sentence_chrf(hypothesis: str, reference: str) -> float:
        # A tensor: chrf_score returns a tuple only with return_sentence_level_score, not asked for here.
        score = cast(torch.Tensor, chrf_score([hypothesis], [[reference]], n_char_order=6, n_word_order=0, beta=2.0,
                                              lowercase=lowercase))
        return 100 * float(score)

    # Sentence-level BLEU is mostly 0 on short sentences; chrF ranks single sentences sensibly.
    scored = [(sentence_chrf(h, r), p, h) for p, h, r in zip(predictions, hypotheses, references)]
    worst = sorted(scored, key=lambda s: s[0])[:_SHOWN]
    table = Table("Worst-translated validation sentences", ["chrF", "source", "reference", "translation"],
                  [[score, p.example["source"], p.example["target"], h] for score, p, h in worst],
                  note=f"the {len(worst)} validation sentences (of {len(scored)}) with the lowest sentence chrF")
    return ReportSection("Translation", [curves, totals, table])

"""The NER part of the run report: per-type precision / recall / F1 and the most frequent span errors.

Spans are compared as the metric compares them (``metrics.py``): an entity is
found when its type and its first and last word are right. The reference
spans are the validation tags read in ``scheme``; the predicted spans are the
saved answers' entities, mapped back to the words they cover, so the table
equals what ``nlpkit evaluate`` reports per type (``f1_TYPE``) on the same
file. (In ``metric_mode: strict`` the metric drops ill-formed predicted tag
sequences, which the answers no longer show; with ``decoding: viterbi`` there
are none.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from nlpkit.tasks import Prediction, ReportSection, Table
from nlpkit_ner.data import join_words, word_spans
from nlpkit_ner.schemes import chunks, spans, tags_from_spans

Span = tuple[str, int, int]  # (type, first word, one past the last)

_SHOWN_ERRORS = 25


def _marked(words: list[str], first: int, last: int) -> str:
    """The sentence with the span's words between [[ and ]]."""
    return " ".join([*words[:first], "[[", *words[first:last], "]]", *words[last:]])


def entity_spans(prediction: Prediction, scheme: str, train_scheme: str) -> tuple[list[str], set[Span], set[Span]]:
    """A saved prediction's words, reference spans and predicted spans."""
    words = [str(w) for w in prediction.example["tokens"]]
    # The reference as the metric reads it: the tags in `scheme`, written in train_scheme, read back.
    gold = chunks(tags_from_spans(spans(prediction.example["tags"], scheme), len(words), train_scheme))
    _, offsets = join_words(words)
    entities = [(e["label"], e["start"], e["end"]) for e in prediction.prediction["entities"]]
    return words, set(gold), set(word_spans(entities, offsets))


def ner_section(types: list[str], scheme: str, train_scheme: str, predictions: list[Prediction]) -> ReportSection:
    """The section of an NER run: per-type scores, then span errors by kind, most frequent first."""
    found: Counter[str] = Counter()
    guessed: Counter[str] = Counter()
    wanted: Counter[str] = Counter()
    errors: Counter[tuple[str, str, str, str]] = Counter()
    sentence: dict[tuple[str, str, str, str], str] = {}
    for prediction in predictions:
        words, gold, predicted = entity_spans(prediction, scheme, train_scheme)
        wanted.update(t for t, _, _ in gold)
        guessed.update(t for t, _, _ in predicted)
        found.update(t for t, _, _ in gold & predicted)
        gold_at = {(s, e): t for t, s, e in gold}
        predicted_at = {(s, e): t for t, s, e in predicted}
        mistakes: list[tuple[str, str, str, int, int]] = []
        for (s, e), t in gold_at.items():
            if (s, e) not in predicted_at:
                mistakes.append(("missed", t, "", s, e))
            elif predicted_at[(s, e)] != t:
                mistakes.append(("wrong type", t, predicted_at[(s, e)], s, e))
        mistakes += [("spurious", "", t, s, e) for (s, e), t in predicted_at.items() if (s, e) not in gold_at]
        for kind, expected, got, s, e in mistakes:
            key = (kind, expected, got, " ".join(words[s:e]))
            errors[key] += 1
            sentence.setdefault(key, _marked(words, s, e))

    def scores(tp: int, pred: int, true: int) -> list[Any]:
        precision, recall = (tp / pred if pred else 0.0), (tp / true if true else 0.0)
        return [precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                true, pred]

    rows = [[t, *scores(found[t], guessed[t], wanted[t])] for t in types]
    rows.append(["all (micro)", *scores(sum(found.values()), sum(guessed.values()), sum(wanted.values()))])
    per_type = Table("Per-type precision, recall and F1", ["type", "precision", "recall", "F1", "reference entities",
                                                           "predicted entities"], rows,
                     note="entity-level, seqeval-style: a predicted entity counts when its type and its words are right")
    error_rows = [[kind, expected, got, text, count, sentence[(kind, expected, got, text)]]
                  for (kind, expected, got, text), count in errors.most_common(_SHOWN_ERRORS)]
    error_table = Table("Most frequent span errors", ["error", "reference type", "predicted type", "span", "times",
                                                      "first sentence (span in [[ ]])"], error_rows,
                        note="missed: a reference entity no prediction covers exactly; spurious: a predicted entity "
                             "no reference entity has; wrong type: the right words with another type. A span with "
                             "wrong boundaries is one missed and one spurious entity, as the metric counts it. "
                             f"{sum(errors.values())} errors in all, the {min(len(errors), _SHOWN_ERRORS)} "
                             f"most frequent shown")
    return ReportSection("Named entities", [per_type, error_table], note=f"{len(predictions)} validation sentences")

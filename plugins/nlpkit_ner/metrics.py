"""Entity-level precision, recall and F1: ``seqeval``'s figures as a torchmetrics Metric.

An entity counts as found when its type and its first and last word are
right. Counts are kept per entity type in fixed-size tensors (summed across
processes), so the metric is cheap to sync and exact under DDP. The default
mode reads tags the conlleval way (``seqeval.metrics.f1_score`` with its
defaults); ``strict`` counts only well-formed IOB2 / IOBES entities
(``mode="strict", scheme=IOB2`` or ``IOBES``).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torchmetrics

from nlpkit_ner.schemes import chunks, strict_spans

__all__ = ["EntityScore", "entity_scores"]


def entity_scores(true_positives: Sequence[int], predicted: Sequence[int], gold: Sequence[int],
                  types: Sequence[str]) -> dict[str, float]:
    """Micro precision / recall / F1 and per-type F1 (``f1_TYPE``) from per-type counts.

    A ratio with nothing to divide by is 0, as ``seqeval`` reports it.
    """
    def f1(tp: float, pred: float, true: float) -> float:
        precision, recall = (tp / pred if pred else 0.0), (tp / true if true else 0.0)
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    tp, pred, true = sum(true_positives), sum(predicted), sum(gold)
    scores = {"precision": tp / pred if pred else 0.0, "recall": tp / true if true else 0.0, "f1": f1(tp, pred, true)}
    for i, type_ in enumerate(types):
        scores[f"f1_{type_}"] = f1(true_positives[i], predicted[i], gold[i])
    return scores


class EntityScore(torchmetrics.Metric):
    """One entity-level score over word-level tag sequences.

    ``update(predictions, targets)`` takes lists of sentences, each a list
    of tag strings (``["B-PER", "I-PER", "O"]``), predictions and targets
    of the same lengths. Several instances that differ only in ``value``
    share their counts inside a ``MetricCollection`` (its compute groups),
    so tags are read once per batch.

    Args:
        types: the entity types counted (``PER``, ``LOC`` ...); another type is an error.
        value: ``f1``, ``precision`` or ``recall``, micro-averaged over types,
            or ``f1_TYPE`` for one type's F1.
        mode: ``default`` (conlleval) or ``strict``.
        scheme: the tags' scheme in strict mode: ``iob2`` or ``iobes``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    true_positives: torch.Tensor  # (types,) counts, summed across processes
    predicted: torch.Tensor
    gold: torch.Tensor

    def __init__(self, types: Sequence[str], value: str = "f1", mode: Literal["default", "strict"] = "default",
                 scheme: str = "iob2") -> None:
        super().__init__()
        if value not in ("f1", "precision", "recall") and value.removeprefix("f1_") not in types:
            raise ValueError(f"value: expected f1, precision, recall or f1_TYPE of {list(types)}, got {value!r}")
        if mode not in ("default", "strict"):
            raise ValueError(f"mode: expected default or strict, got {mode!r}")
        self.types = list(types)
        self.value = value
        self.mode = mode
        self.scheme = scheme
        self._index = {t: i for i, t in enumerate(self.types)}
        for name in ("true_positives", "predicted", "gold"):
            self.add_state(name, torch.zeros(len(self.types), dtype=torch.long), dist_reduce_fx="sum")

    def _spans(self, tags: Sequence[str]) -> set[tuple[str, int, int]]:
        return set(strict_spans(tags, self.scheme) if self.mode == "strict" else chunks(tags))

    def update(self, predictions: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predicted sentences for {len(targets)} target sentences")
        counts = torch.zeros(3, len(self.types), dtype=torch.long)  # true positives, predicted, gold
        for predicted, gold in zip(predictions, targets):
            if len(predicted) != len(gold):
                raise ValueError(f"a sentence of {len(gold)} target tags has {len(predicted)} predicted tags")
            found, expected = self._spans(predicted), self._spans(gold)
            for row, entities in ((0, found & expected), (1, found), (2, expected)):
                for type_, _, _ in entities:
                    if type_ not in self._index:
                        raise ValueError(f"entity type '{type_}' is not one of {self.types}")
                    counts[row, self._index[type_]] += 1
        counts = counts.to(self.true_positives.device)
        self.true_positives += counts[0]
        self.predicted += counts[1]
        self.gold += counts[2]

    def scores(self) -> dict[str, float]:
        """Every figure from the counts so far: ``precision``, ``recall``, ``f1`` and ``f1_TYPE``."""
        return entity_scores(self.true_positives.tolist(), self.predicted.tolist(), self.gold.tolist(), self.types)

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.scores()[self.value], dtype=torch.float32)

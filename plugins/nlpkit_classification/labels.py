"""A classification row's labels: one label, or several (a JSON list, or one string cut at a separator)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nlpkit.errors import NlpkitError


@dataclass(frozen=True)
class RowLabels:
    """How the ``label`` column is read: ``multi_label`` rows may hold several labels."""

    multi_label: bool
    separator: str

    def of(self, value: Any) -> list[str]:
        """The labels of one row."""
        if not self.multi_label:
            return [str(value)]
        values = value if isinstance(value, list) else str(value).split(self.separator)
        return [str(v).strip() for v in values if str(v).strip()]

    def learn(self, values: Iterable[Any]) -> list[str]:
        """The sorted label set of the training rows."""
        labels = sorted({label for value in values for label in self.of(value)})
        if len(labels) < 2 and not self.multi_label:
            raise NlpkitError(f"data.train: needs at least two labels, found {labels}")
        return labels

    def check(self, where: str, values: Iterable[Any], labels: list[str]) -> None:
        """Refuse a row with a label that training never saw, naming the row."""
        for row, value in enumerate(values):
            if unseen := [label for label in self.of(value) if label not in labels]:
                raise NlpkitError(f"{where}: row {row + 1}: label '{unseen[0]}' never seen in training "
                                  f"(training labels: {', '.join(labels)})")

    def targets(self, values: Iterable[Any], labels: list[str]) -> list[Any]:
        """Training targets: a class index per row, or one 0/1 per label (multi-label)."""
        indices = [[labels.index(label) for label in self.of(value)] for value in values]
        return [[int(i in row) for i in range(len(labels))] if self.multi_label else row[0] for row in indices]

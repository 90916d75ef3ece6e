"""The parts of a run report that a task's ``report_section`` returns (tables, matrices, curves, text).

Apart from ``nlpkit/report.py``, which draws and renders them, so that ``nlpkit.tasks`` can offer them
to plugins without importing the report's machinery (which loads run folders and tasks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

__all__ = ["Curves", "Matrix", "Part", "Prediction", "ReportSection", "RunRecord", "Table", "Text"]


# -- what a task's section is made of --------------------------------------------


@dataclass
class Table:
    """A table: a header and rows of cells (text, numbers; None is an empty cell).

    Floats are shown with 4 decimals; every cell is escaped.
    """

    title: str
    columns: list[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""


@dataclass
class Matrix:
    """A matrix of numbers drawn as a heat map with its values written in (a confusion matrix).

    Attributes:
        values: ``len(rows)`` lists of ``len(columns)`` numbers.
        row_title, column_title: what the rows and columns are (``reference``, ``prediction``).
    """

    title: str
    rows: list[str]
    columns: list[str]
    values: Sequence[Sequence[float]]
    row_title: str = ""
    column_title: str = ""
    note: str = ""


@dataclass
class Curves:
    """Lines against steps (or another x): ``series`` maps a legend name to ``(x, y)`` points."""

    title: str
    series: dict[str, list[tuple[float, float]]]
    x_label: str = "step"
    y_label: str = ""
    log_y: bool = False
    note: str = ""


@dataclass
class Text:
    """Preformatted text (generated samples), shown as it is, escaped."""

    title: str
    text: str
    note: str = ""


Part = Union[Table, Matrix, Curves, Text]


@dataclass
class ReportSection:
    """What a task adds to the report: a title, its parts in order, and a note under the title."""

    title: str
    parts: list[Part] = field(default_factory=list)
    note: str = ""


@dataclass
class Prediction:
    """One validation example and the best model's answer to it (a row of ``predictions/validation.jsonl``).

    Attributes:
        example: the example's fields under the task's names (inputs and
            references: ``{"text": ..., "label": ...}``, ``{"tokens": [...], "tags": [...]}``).
        prediction: the task's ``decode`` answer, as ``predict`` gives it.
    """

    example: dict[str, Any]
    prediction: Any


@dataclass
class RunRecord:
    """What a task's ``report_section`` may read of the run besides its predictions.

    Attributes:
        path: the run folder.
        recipe: the resolved recipe (``recipe.yaml``).
        history: ``metrics.csv``'s rows, each with the columns it has a number in
            (``step``, ``epoch``, ``train_loss``, ``val_loss``, ``val_<metric>`` ...).
        metrics: the final metrics (``metrics.json``; empty for an unfinished run).
        samples: ``samples.txt`` (what the task showed after each validation), or "".
    """

    path: Path
    recipe: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, float]
    samples: str = ""

    def curve(self, column: str) -> list[tuple[float, float]]:
        """``(step, value)`` of every row that has ``column``, in the order logged."""
        return [(row.get("step", index), row[column]) for index, row in enumerate(self.history) if column in row]

    @property
    def columns(self) -> list[str]:
        """The history's columns, in the order they first appear."""
        return list(dict.fromkeys(key for row in self.history for key in row))

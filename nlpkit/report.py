"""The run report: a run's curves, recipe and versions, and what its task shows of the model's errors.

``nlpkit run`` writes it at the end (recipe key ``report``, default true) and
``nlpkit report RUN_DIR`` writes it again from the run folder alone:

- ``RUN_DIR/report.html``: one self-contained file (the figures inline as
  base64 PNG data URIs, no script, no stylesheet or font from the network),
  every text that comes from data or files HTML-escaped;
- ``RUN_DIR/report/*.png``: the same figures as files.

What it reads, all in the run folder: ``run.json``, ``recipe.yaml``,
``metrics.csv`` (curves), ``metrics.json`` (final metrics), ``samples.txt``,
and ``predictions/validation.jsonl``, the best model's answers to the
validation split that the run writes after training
(:func:`write_predictions`), so a report needs no model and no recomputation.

The core draws the generic part: training and validation loss, every
validation metric and the learning rate against steps, and the throughput
when the run logged one. Each task adds its own part through the Task
contract's optional ``report_section(predictions, run)``, which returns a
:class:`ReportSection` of :class:`Table`, :class:`Matrix`, :class:`Curves`
and :class:`Text` parts; the core draws and renders them. Figures are drawn
with matplotlib's Agg canvas on ``Figure`` objects, so a report never
switches the pyplot backend of the process (a notebook keeps its own).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence, Union

from nlpkit._files import atomic_write, make_folder
from nlpkit.errors import NlpkitError
from nlpkit.report_parts import Curves, Matrix, Part, Prediction, ReportSection, RunRecord, Table, Text

if TYPE_CHECKING:
    from nlpkit.plugins import PluginSet
    from nlpkit.tasks import Task, TaskModel

__all__ = ["ReportSection", "Table", "Matrix", "Curves", "Text", "Prediction", "RunRecord", "write_predictions",
           "read_predictions", "read_run_record", "check_section", "write_report", "REPORT_FILE", "FIGURES_DIR", "PREDICTIONS_FILE"]

log = logging.getLogger("nlpkit")

REPORT_FILE = "report.html"
FIGURES_DIR = "report"
PREDICTIONS_FILE = "predictions/validation.jsonl"
_HISTORY_FILE = "metrics.csv"
_SAMPLES_FILE = "samples.txt"

# metrics.csv columns that hold a throughput (Lightning's ThroughputMonitor logs `*_per_sec`).
_THROUGHPUT = re.compile(r"(per_sec|per_second|per_s|/s)$|throughput", re.IGNORECASE)


# -- the core's own figures --------------------------------------------------------


@dataclass
class _CurveGrid:
    """Small curves side by side in one figure (the core's validation metrics, one plot each)."""

    title: str
    curves: list[Curves]
    note: str = ""


# -- the predictions the run saves -----------------------------------------------


def write_predictions(run_dir: Path, task: Task, model: TaskModel, dataset: Any, batch_size: int,
                      device: Any = None, limit_batches: int | float | None = None,
                      forward_context: Callable[[], ContextManager[Any]] | None = None) -> Path:
    """Answer every example of ``dataset`` with ``model`` as ``predict`` does; write ``predictions/validation.jsonl``.

    Each example is encoded from its input fields (``input_columns`` and the
    ``optional_columns`` present, the targets left out, as ``predict`` sees
    it) and answered through the task's ``decode``, in batches of similar
    length (``nlpkit.tasks.answer_features``); a row is
    ``{"example": {...every field...}, "prediction": answer}``.

    Args:
        run_dir: the run folder.
        task: the run's task.
        model: the model to answer with (the run's best).
        dataset: the validation split (a ``datasets.Dataset`` with the task's field names).
        batch_size: examples per forward pass.
        device: where to run the model (the trainer's device); None: where it is.
        limit_batches: the run's ``trainer.limit_val_batches`` (batches, or a
            fraction of them, as Lightning reads it): the examples validation saw.
        forward_context: what the forward passes run in (the trainer's precision: bf16 autocast
            under ``bf16-mixed``), so that the answers are those validation scored.
    """
    import contextlib

    from nlpkit.tasks import answer_features  # here: the rest of the report needs neither torch nor the task module

    if limit_batches is not None:
        dataset = dataset.select(range(_validated_rows(len(dataset), batch_size, limit_batches)))
    fields = [c for c in (*task.input_columns, *task.optional_columns) if c in dataset.column_names]
    if device is not None:
        model.to(device)
    model.eval()
    rows = dataset[:]  # column -> values
    encoded = task.encode({name: rows[name] for name in fields})
    features = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
    with (forward_context or contextlib.nullcontext)():
        answers = answer_features(task, model, features, batch_size, device)
    lines = [json.dumps({"example": {name: values[i] for name, values in rows.items()}, "prediction": answer},
                        ensure_ascii=False, default=str) for i, answer in enumerate(answers)]
    path = run_dir / PREDICTIONS_FILE
    make_folder(path.parent, "the predictions folder")
    atomic_write(path, "".join(line + "\n" for line in lines))
    return path


def _validated_rows(rows: int, batch_size: int, limit: int | float) -> int:
    """How many rows Lightning validates under ``limit_val_batches``: an int counts batches, a float is a fraction."""
    batches = math.ceil(rows / batch_size)
    kept = limit if isinstance(limit, int) else int(batches * limit)
    return min(rows, max(0, kept) * batch_size)


def read_predictions(run_dir: Path) -> list[Prediction] | None:
    """The run's saved validation predictions; None when the run wrote none (unfinished, or older than them).

    Raises:
        NlpkitError: a line that is not a JSON object with ``example`` and ``prediction``, naming it.
    """
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise NlpkitError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("example"), dict) or "prediction" not in row:
            raise NlpkitError(f"{path}:{number}: expected an object with 'example' and 'prediction'")
        out.append(Prediction(row["example"], row["prediction"]))
    return out


def check_section(section: Any) -> None:
    """Check what a task's ``report_section`` returned: None, or a :class:`ReportSection` of parts nlpkit renders.

    Raises:
        ValueError: naming the part and what is wrong with it (a row of the
            wrong width, a matrix of the wrong shape, a point that is not a
            pair of numbers, a part of another type).
    """
    if section is None:
        return
    if not isinstance(section, ReportSection):
        raise ValueError(f"expected a ReportSection or None, got {type(section).__name__}")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for index, part in enumerate(section.parts):
        where = f"part {index + 1} ({type(part).__name__} {getattr(part, 'title', '')!r})"
        if isinstance(part, Table):
            for row_number, row in enumerate(part.rows, start=1):
                if len(row) != len(part.columns):
                    raise ValueError(f"{where}: row {row_number} has {len(row)} cells for {len(part.columns)} columns")
        elif isinstance(part, Matrix):
            if len(part.values) != len(part.rows) or any(len(r) != len(part.columns) for r in part.values):
                raise ValueError(f"{where}: expected {len(part.rows)} rows of {len(part.columns)} values")
            if not all(number(v) for r in part.values for v in r):
                raise ValueError(f"{where}: values must be numbers")
        elif isinstance(part, Curves):
            for name, points in part.series.items():
                if not all(len(p) == 2 and number(p[0]) and number(p[1]) for p in points):
                    raise ValueError(f"{where}: series {name!r}: expected (x, y) pairs of numbers")
        elif isinstance(part, Text):
            if not isinstance(part.text, str):
                raise ValueError(f"{where}: text must be a string, got {type(part.text).__name__}")
        else:
            raise ValueError(f"{where}: a part must be a Table, Matrix, Curves or Text")


# -- reading the run folder -------------------------------------------------------


def _read_history(path: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as numbers; cells that are empty or not numbers are left out."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            numbers = {}
            for key, value in row.items():
                try:
                    number = float(value) if key and value not in (None, "") else None
                except ValueError:
                    number = None
                if number is not None and math.isfinite(number):
                    numbers[key] = number
            rows.append(numbers)
    return rows


def read_run_record(run_dir: str | Path) -> RunRecord:
    """What a task's ``report_section`` reads of a run folder besides the predictions."""
    from nlpkit.runs import RunFolder

    return _run_record(RunFolder.open_unfinished(run_dir))


def _run_record(run: Any) -> RunRecord:
    from nlpkit.runs import METRICS_FILE

    metrics_path = run.path / METRICS_FILE
    metrics = run.read_json(METRICS_FILE) if metrics_path.is_file() else {}
    samples = run.path / _SAMPLES_FILE
    return RunRecord(run.path, run.read_recipe(), _read_history(run.path / _HISTORY_FILE),
                     metrics if isinstance(metrics, dict) else {},
                     samples.read_text(encoding="utf-8", errors="replace") if samples.is_file() else "")


# -- the generic part ----------------------------------------------------------------


def _generic_curves(record: RunRecord) -> tuple[list[Part | _CurveGrid], list[str]]:
    """The core's figures: losses, each validation metric, the learning rate, the throughput; and notes."""
    columns = record.columns
    parts: list[Part | _CurveGrid] = []
    notes: list[str] = []
    losses: dict[str, list[tuple[float, float]]] = {
        name: record.curve(name) for name in ("train_loss", "val_loss") if name in columns}
    if losses:
        parts.append(Curves("Loss", losses, y_label="loss"))
    else:
        notes.append("metrics.csv holds no loss yet.")
    metrics = [name for name in columns if name.startswith("val_") and name != "val_loss"]
    if metrics:
        parts.append(_CurveGrid("Validation metrics", [Curves(name, {name: record.curve(name)}) for name in metrics],
                                note="drawn: " + ", ".join(metrics)))
    rates = [name for name in columns if name.startswith("lr-")]
    if rates:
        parts.append(Curves("Learning rate", {name: record.curve(name) for name in rates}, y_label="learning rate"))
    throughput = [name for name in columns if _THROUGHPUT.search(name)]
    if throughput:
        parts.append(Curves("Throughput", {name: record.curve(name) for name in throughput}, y_label="per second"))
    else:
        notes.append("metrics.csv holds no throughput column (a *_per_sec column), so no throughput is drawn.")
    return parts, notes


# -- drawing --------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    # A Figure on its own Agg canvas: pyplot (and its global backend) is never touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw_grid(part: _CurveGrid) -> Any:
    columns = min(3, len(part.curves))
    rows = math.ceil(len(part.curves) / columns)
    figure = _figure(3.6 * columns, 2.6 * rows)
    for index, curves in enumerate(part.curves):
        _plot(figure.add_subplot(rows, columns, index + 1), curves, legend=False)
    return figure


def _draw_curves(part: Curves) -> Any:
    figure = _figure(6.4, 3.6)
    _plot(figure.add_subplot(), part, legend=True)
    return figure


def _plot(axes: Any, part: Curves, legend: bool) -> None:
    for name, points in part.series.items():
        if not points:
            continue
        xs, ys = zip(*points)
        # A single point draws no line: mark every point when there are few.
        axes.plot(xs, ys, label=name, marker="o" if len(points) < 30 else None, markersize=3)
    if part.log_y and all(y > 0 for points in part.series.values() for _, y in points):
        axes.set_yscale("log")
    axes.set_xlabel(part.x_label)
    axes.set_ylabel(part.y_label)
    axes.set_title(part.title)
    axes.grid(True, alpha=0.3)
    if legend and any(part.series.values()):
        axes.legend(fontsize="small")


def _draw_matrix(part: Matrix) -> Any:
    import numpy as np

    values = np.asarray(part.values, dtype=float).reshape(len(part.rows), len(part.columns))
    size = max(3.5, min(12.0, 0.45 * max(len(part.rows), len(part.columns)) + 2.5))
    figure = _figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", aspect="auto")
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set_xticks(range(len(part.columns)), part.columns, rotation=45 if len(part.columns) > 4 else 0,
                    ha="right" if len(part.columns) > 4 else "center")
    axes.set_yticks(range(len(part.rows)), part.rows)
    axes.set_xlabel(part.column_title)
    axes.set_ylabel(part.row_title)
    axes.set_title(part.title)
    if values.size and len(part.rows) <= 25 and len(part.columns) <= 25:
        threshold = values.max() / 2 if values.max() > 0 else 1
        for (r, c), value in np.ndenumerate(values):
            text = f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
            axes.text(c, r, text, ha="center", va="center", fontsize="small",
                      color="white" if value > threshold else "black")
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# -- rendering ------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Any text that reaches the page, escaped (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return _e(f"{value:.4f}")
    return _e(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"


class _Page:
    """The HTML being built, and the figures written beside it."""

    def __init__(self, figures_dir: Path) -> None:
        self.figures_dir = figures_dir
        self.body: list[str] = []
        self.figures: list[Path] = []

    def heading(self, level: int, text: str) -> None:
        self.body.append(f"<h{level}>{_e(text)}</h{level}>")

    def note(self, text: str) -> None:
        if text:
            self.body.append(f'<p class="note">{_e(text)}</p>')

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self.body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, title: str, figure: Any) -> None:
        data = _png(figure)
        path = self.figures_dir / f"{len(self.figures) + 1:02d}-{_slug(title)}.png"
        atomic_write(path, data)
        self.figures.append(path)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        self.body.append(f'<figure><img src="{uri}" alt="{_e(title)}"></figure>')

    def part(self, part: Part | _CurveGrid) -> None:
        if isinstance(part, _CurveGrid):
            self.heading(3, part.title)
            self.note(part.note)
            self.figure(part.title, _draw_grid(part))
        elif isinstance(part, Table):
            self.heading(3, part.title)
            self.note(part.note)
            self.table(part.columns, part.rows)
        elif isinstance(part, Matrix):
            self.heading(3, part.title)
            self.note(part.note)
            self.figure(part.title, _draw_matrix(part))
            # The numbers as a table too: readable where the heat map's cells get small, and searchable.
            corner = " \\ ".join(t for t in (part.row_title, part.column_title) if t)
            self.table([corner, *part.columns], [[name, *values] for name, values in zip(part.rows, part.values)])
        elif isinstance(part, Curves):
            self.heading(3, part.title)
            self.note(part.note)
            if any(part.series.values()):
                self.figure(part.title, _draw_curves(part))
            else:
                self.note("nothing logged yet.")
        elif isinstance(part, Text):
            self.heading(3, part.title)
            self.note(part.note)
            self.body.append(f"<pre>{_e(part.text)}</pre>")
        else:
            raise TypeError(f"a report part must be a Table, Matrix, Curves or Text, got {type(part).__name__}")


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }
h1 { border-bottom: 2px solid #4a7ab5; padding-bottom: .2em; }
h2 { margin-top: 2em; color: #2c5282; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
td { max-width: 40em; overflow-wrap: anywhere; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 85%; white-space: pre-wrap; }
figure { margin: .5em 0 1.5em; }
img { max-width: 100%; }
.note { color: #555; font-style: italic; }
"""


def write_report(run_dir: str | Path, plugin_set: PluginSet | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` and ``RUN_DIR/report/*.png`` from the run folder alone.

    Args:
        run_dir: a run folder (a finished run; an unfinished one shows what it has).
        plugin_set: the loaded plugins (the run's task's plugin among them); default: the installed ones.

    Returns:
        The path of ``report.html``.

    Raises:
        NlpkitError: not a run folder, a missing or unreadable file of it, a
            task whose plugin is not loaded.
    """
    from nlpkit.assembly import restore_task
    from nlpkit.plugins import load_plugins
    from nlpkit.recipe import load_recipe
    from nlpkit.runs import RUN_FILE, RunFolder

    run = RunFolder.open_unfinished(run_dir)
    plugin_set = plugin_set or load_plugins()
    info = run.read_json(RUN_FILE)
    record = _run_record(run)
    recipe = load_recipe(record.recipe, registries=plugin_set.registries, check_files=False)
    recipe.source = str(run.path / "recipe.yaml")
    task, config = restore_task(run, recipe, plugin_set.registries)
    predictions = read_predictions(run.path)

    figures_dir = run.path / FIGURES_DIR
    make_folder(figures_dir, "the report's figures folder")
    for old in figures_dir.glob("*.png"):  # figures of an earlier report that this one may not have
        old.unlink()
    page = _Page(figures_dir)
    page.heading(1, f"Run {run.path.name}")
    status = info.get("status", "running or interrupted")
    origin = recipe.backbone.pretrained or recipe.backbone.preset or config.kind
    page.table(["run", ""], [
        ["task", task.name], ["status", status + (f": {info['error']}" if info.get("error") else "")],
        ["created", info.get("created", "")], ["backbone", f"{origin}: {config.kind}, {config.num_layers} layers, "
                                                            f"hidden {config.hidden_size}"],
        ["folder", str(run.path)],
    ])
    page.heading(2, "Final metrics")
    if record.metrics:
        page.table(["metric", "value"], [[k, v] for k, v in record.metrics.items()])
    else:
        page.note("metrics.json is not written yet: the run has not finished.")

    page.heading(2, "Training curves")
    parts, notes = _generic_curves(record)
    for note in notes:
        page.note(note)
    for part in parts:
        page.part(part)

    section = task.report_section(predictions or [], record)
    try:
        check_section(section)
    except ValueError as error:  # the task's code, not the user's data: a bug keeps its traceback
        raise ValueError(f"task '{task.name}': report_section returned a section nlpkit cannot render: {error}") from None
    page.heading(2, section.title if section is not None else f"Task: {task.name}")
    if predictions is None:
        page.note(f"{PREDICTIONS_FILE} is missing (the run has not finished, or it is older than saved "
                  f"predictions), so the task's part sees no predictions.")
    if section is None:
        page.note(f"task '{task.name}' adds no section of its own to the report.")
    else:
        page.note(section.note)
        for part in section.parts:
            page.part(part)

    page.heading(2, "Recipe")
    page.body.append(f"<pre>{_e((run.path / 'recipe.yaml').read_text(encoding='utf-8'))}</pre>")
    page.heading(2, "Versions")
    versions = info.get("versions", {})
    page.table(["package", "version"], [[k, v] for k, v in versions.items()] if isinstance(versions, dict) else [])
    plugins = info.get("plugins", [])
    page.note("plugins: " + ", ".join(map(str, plugins)) if isinstance(plugins, list) else "")

    document = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{_e('nlpkit run ' + run.path.name)}</title><style>{_STYLE}</style></head>"
                "<body>\n" + "\n".join(page.body) + "\n</body></html>\n")
    path = run.path / REPORT_FILE
    atomic_write(path, document)
    return path

"""``nlpkit runs``: the run folders of an output folder, newest first, with what each run came to.

A run's status:

- ``finished``: ``run.json`` says so (the run saved its model and metrics);
- ``failed``: ``run.json`` says so, with the error (the run stopped on an
  error after its first checkpoint and can be resumed);
- ``running``: its training process, named in ``run.json`` (host, pid and
  start time), still lives. On another host the process cannot be asked, so
  there the run's heartbeat decides: a run shows running while its heartbeat
  (refreshed every minute while it trains) is less than ``STALE_AFTER_S``
  (10 minutes) old;
- ``interrupted``: neither finished nor failed, and its process is gone
  (``kill -9``, a crash, a power cut, Ctrl-C) or, on another host, silent
  for 10 minutes. ``--resume`` continues it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nlpkit._process import process_alive
from nlpkit.errors import NlpkitError
from nlpkit.runs import HISTORY_FILE, METRICS_FILE, RUN_FILE, RunFolder

__all__ = ["RunRow", "list_runs", "read_run", "run_status", "render_table", "rows_as_json", "HEARTBEAT_EVERY_S",
           "STALE_AFTER_S"]

log = logging.getLogger("nlpkit")

HEARTBEAT_EVERY_S = 60.0  # how often a training process refreshes run.json's heartbeat
STALE_AFTER_S = 600.0  # a heartbeat older than this: the run (of another host) is taken as interrupted
STATUSES = ("running", "finished", "interrupted", "failed")


@dataclass
class RunRow:
    """One run of the table (``nlpkit runs --json`` prints these as objects).

    Attributes:
        name: the run folder's name.
        path: the run folder.
        task: the recipe's task.
        backbone: the pretrained folder's name, the preset, or ``custom <kind>``.
        status: running, finished, interrupted or failed.
        monitor: the monitored metric (``training.monitor``).
        best: its best value so far (a finished run: at the best checkpoint), None before any validation.
        wall_time_s: seconds from the start to the end (pauses between an interruption and a resume
            included), or to now for a running run, or to its last sign of life.
        created: when the run started (run.json's ``created``).
        error: why a failed run failed.
    """

    name: str
    path: str
    task: str | None
    backbone: str | None
    status: str
    monitor: str | None
    best: float | None
    wall_time_s: float | None
    created: str | None
    error: str | None = None


def _time(text: Any) -> _dt.datetime | None:
    """An ISO time of run.json; one without an offset (``created``) is the local time."""
    if not isinstance(text, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone() if moment.tzinfo is None else moment


def run_status(info: dict[str, Any], now: _dt.datetime | None = None) -> str:
    """The status of the run whose ``run.json`` holds ``info`` (see the module docstring)."""
    if info.get("status") in ("finished", "failed"):
        return str(info["status"])
    process = info.get("process")
    alive = process_alive(process) if isinstance(process, dict) else None
    if alive is not None:
        return "running" if alive else "interrupted"
    # Another host (or a run folder older than the process record): its heartbeat tells.
    now = now or _dt.datetime.now(_dt.timezone.utc)
    last = _time(info.get("heartbeat")) or _time(info.get("created"))
    return "running" if last is not None and (now - last).total_seconds() < STALE_AFTER_S else "interrupted"


def _backbone(recipe: dict[str, Any]) -> str | None:
    section = recipe.get("backbone")
    if not isinstance(section, dict):
        return None
    if section.get("pretrained"):
        return Path(str(section["pretrained"])).name
    if section.get("preset"):
        return str(section["preset"])
    return f"custom {section.get('kind') or ''}".strip()


def _best(run: RunFolder, status: str, monitor: str | None, mode: str | None) -> float | None:
    """The monitored metric: at the best checkpoint for a finished run, else the best validation so far."""
    if monitor is None:
        return None
    if status == "finished" and (run.path / METRICS_FILE).is_file():
        value = run.read_json(METRICS_FILE).get(monitor)
        if isinstance(value, (int, float)):
            return float(value)
    try:
        with (run.path / HISTORY_FILE).open(newline="", encoding="utf-8") as handle:
            values = [float(row[monitor]) for row in csv.DictReader(handle) if row.get(monitor)]
    except (OSError, ValueError, csv.Error):  # no history yet, or a row cut by a kill
        return None
    values = [value for value in values if math.isfinite(value)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def _last_sign_of_life(run: RunFolder, info: dict[str, Any]) -> _dt.datetime | None:
    """When a run that is not running last did anything: its end, its heartbeat or its newest file."""
    recorded = _time(info.get("ended")) or _time(info.get("heartbeat"))
    files = [path for path in (*run.path.iterdir(), *run.checkpoint_dir.glob("*.ckpt")) if path.is_file()]
    newest = max((path.stat().st_mtime for path in files), default=None)
    on_disk = _dt.datetime.fromtimestamp(newest, _dt.timezone.utc) if newest is not None else None
    if info.get("ended") or on_disk is None:
        return recorded
    return max(recorded, on_disk) if recorded is not None else on_disk


def read_run(folder: Path, now: _dt.datetime | None = None) -> RunRow:
    """The table row of one run folder.

    Raises:
        NlpkitError: the folder holds no readable run.json or recipe.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    run = RunFolder.open_unfinished(folder)
    info = run.read_json(RUN_FILE)
    recipe = run.read_recipe()
    section = recipe.get("training")
    training: dict[str, Any] = section if isinstance(section, dict) else {}
    status = run_status(info, now)
    monitor, mode = training.get("monitor"), training.get("monitor_mode")
    started = _time(info.get("created"))
    ended = now if status == "running" else _last_sign_of_life(run, info)
    wall = (ended - started).total_seconds() if started is not None and ended is not None else None
    return RunRow(
        name=folder.name,
        path=str(folder),
        task=info.get("task"),
        backbone=_backbone(recipe),
        status=status,
        monitor=monitor,
        best=_best(run, status, monitor, mode),
        wall_time_s=max(0.0, wall) if wall is not None else None,
        created=info.get("created"),
        error=info.get("error") if status == "failed" else None,
    )


def list_runs(output_dir: str | Path) -> list[RunRow]:
    """The runs in ``output_dir`` (its sub-folders that hold a run.json), newest first.

    A folder whose run files cannot be read is left out with a warning.

    Raises:
        NlpkitError: ``output_dir`` is not a folder.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise NlpkitError(f"runs: '{output_dir}' is not a folder (give the output_dir that holds the run folders)")
    now = _dt.datetime.now(_dt.timezone.utc)
    rows = []
    for child in sorted(folder.iterdir()):
        if not (child / RUN_FILE).is_file():
            continue
        try:
            rows.append(read_run(child, now))
        except NlpkitError as error:
            log.warning("nlpkit: %s left out: %s", child, error)
    epoch = _dt.datetime.fromtimestamp(0, _dt.timezone.utc)
    # Newest first; names break ties (two runs started within the same second).
    return sorted(rows, key=lambda row: (_time(row.created) or epoch, row.name), reverse=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


_STATUS_STYLES = {"running": "yellow", "finished": "green", "interrupted": "magenta", "failed": "red"}


def render_table(rows: list[RunRow]) -> Any:
    """The rows as a ``rich`` table: run, task, backbone, status, best monitored metric, wall time."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for heading in ("run", "task", "backbone", "status", "best", "wall time"):
        table.add_column(heading, justify="right" if heading == "wall time" else "left", no_wrap=heading != "backbone")
    for row in rows:
        best = f"{row.monitor} {row.best:.4f}" if row.best is not None else "-"
        # Text, not markup: a folder name may hold brackets.
        cells = [Text(row.name), Text(row.task or "-"), Text(row.backbone or "-"),
                 Text(row.status, style=_STATUS_STYLES.get(row.status, "")), Text(best), Text(_duration(row.wall_time_s))]
        table.add_row(*cells)
    return table


def rows_as_json(rows: list[RunRow]) -> str:
    """The rows as a JSON list of objects (``nlpkit runs --json``)."""
    return json.dumps([asdict(row) for row in rows], indent=2)

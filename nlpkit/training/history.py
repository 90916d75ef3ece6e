"""A run's history (``metrics.csv``, ``samples.txt``), kept whole across interruptions and resumes.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts,
and buffers rows in memory between flushes, so a resumed run would hold the
resumed rows only and a killed one would lose the rows since the last flush.
Here every checkpoint first flushes the history and records how much of it
there was (:class:`RunHistory`); a resumed run cuts the files back to that
point (the rows of the steps it is about to replay go) and appends to them.
Every logged step is in the history exactly once.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only
from typing_extensions import override

from nlpkit._files import atomic_write
from nlpkit.runs import SAMPLES_FILE, RunFolder

__all__ = ["RunHistoryLogger", "RunHistory"]


class _HistoryWriter(ExperimentWriter):
    """Appends rows to an existing ``metrics.csv`` instead of deleting it, and counts the rows on disk."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.rows_on_disk = 0
        if os.path.isfile(self.metrics_file_path):
            header, rows = self._read()
            self.metrics_keys = header
            self.rows_on_disk = len(rows)

    @override
    def _check_log_dir_exists(self) -> None:
        """The run folder holds the recipe already, and a resumed run's history: keep it."""

    def _read(self) -> tuple[list[str], list[list[str]]]:
        with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
            table = list(csv.reader(file))
        return (table[0], table[1:]) if table else ([], [])

    def _rewrite(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        # A rewrite replaces the file in one rename: a kill during it leaves the old history whole.
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_file_path, text.getvalue())

    @override
    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        if new_keys or not os.path.isfile(self.metrics_file_path):
            old: list[dict[str, Any]] = []
            if os.path.isfile(self.metrics_file_path):
                header, rows = self._read()
                old = [dict(zip(header, row)) for row in rows]
            self._rewrite(self.metrics_keys, old + self.metrics)
        else:
            # Appending: a kill mid-write leaves a partial last row, which a resume cuts off.
            with open(self.metrics_file_path, "a", newline="", encoding="utf-8") as file:
                csv.DictWriter(file, fieldnames=self.metrics_keys).writerows(self.metrics)
        self.rows_on_disk += len(self.metrics)
        self.metrics = []

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` rows of the file (those a checkpoint recorded)."""
        self.metrics = []
        if not os.path.isfile(self.metrics_file_path):
            self.rows_on_disk = 0
            return
        header, table = self._read()
        if len(table) > rows:
            self._rewrite(header, [dict(zip(header, row)) for row in table[:rows]])
        self.metrics_keys = header
        self.rows_on_disk = min(rows, len(table))


class RunHistoryLogger(CSVLogger):
    """``metrics.csv`` straight in the run folder, one row per logging step, kept across resumes."""

    _experiment: _HistoryWriter | None  # CSVLogger's attribute, holding the writer below

    def __init__(self, run_dir: Path) -> None:
        # name="" and version="" put metrics.csv in the run folder itself.
        super().__init__(save_dir=run_dir, name="", version="")

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> _HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any = None) -> None:
        """The run folder's recipe.yaml records them; no hparams.yaml beside it."""


class RunHistory(pl.Callback):
    """Records in each checkpoint how much history there was, and cuts it back to that on resume.

    Its state in a checkpoint: the rows of ``metrics.csv`` and the bytes of
    ``samples.txt`` written before it, and ``saves``, the checkpoint's place
    in the order of all the run's checkpoints (see
    ``nlpkit.training.checkpoints.latest_checkpoint``).

    Args:
        logger: the run's metrics logger.
        run_dir: the run folder.
        resumed_recipe: on resume, the recipe as resumed (``training.epochs``
            raised ...); it replaces ``recipe.yaml`` once the checkpoint is
            restored, so a resume that fails before leaves the folder as it was.
    """

    def __init__(self, logger: RunHistoryLogger, run_dir: Path, resumed_recipe: dict[str, Any] | None = None) -> None:
        self.logger = logger
        self.run_dir = run_dir
        self.samples = run_dir / SAMPLES_FILE
        self.resumed_recipe = resumed_recipe
        self.saves = 0
        self._restored: dict[str, int] | None = None
        self._trainer: pl.Trainer | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, int]:
        # Called while a checkpoint is written: flush first, so that it records what is on disk.
        self.saves += 1
        state = {"saves": self.saves, "metrics_rows": 0, "samples_bytes": 0}
        if self._trainer is not None and self._trainer.is_global_zero:
            self.logger.save()
            state["metrics_rows"] = self.logger.experiment.rows_on_disk
            state["samples_bytes"] = self.samples.stat().st_size if self.samples.is_file() else 0
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.saves = int(state_dict.get("saves", 0))
        self._restored = dict(state_dict)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After every restore (some strategies restore late), before the first replayed step logs anything.
        if self._restored is None or not trainer.is_global_zero:
            return
        if self.resumed_recipe is not None:
            RunFolder(self.run_dir).write_recipe(self.resumed_recipe)
        # What a killed run was writing when it died: a temporary file that never got its rename.
        for leftover in [*self.run_dir.glob(".*.tmp"), *self.run_dir.glob("checkpoints/.*.tmp")]:
            leftover.unlink(missing_ok=True)
        self.logger.experiment.truncate(self._restored["metrics_rows"])
        if self.samples.is_file() and self.samples.stat().st_size > self._restored["samples_bytes"]:
            os.truncate(self.samples, self._restored["samples_bytes"])
        self._restored = None

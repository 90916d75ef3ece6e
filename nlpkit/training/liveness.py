"""Keeps ``run.json``'s account of the training process current, for ``nlpkit runs`` (``nlpkit.run_table``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from nlpkit.run_table import HEARTBEAT_EVERY_S
from nlpkit.runs import RunFolder

__all__ = ["RunLiveness"]


class RunLiveness(pl.Callback):
    """Records which process trains the run and refreshes its heartbeat; a resumed run that fails is marked so.

    A new run's process is recorded with its first files (``RunFolder.write_start``);
    a resumed run's once its checkpoint is restored (``on_train_start``), so that
    a resume that cannot start leaves the folder as it was.

    Args:
        run_dir: the run folder.
        resumed: whether this process resumes the run.
    """

    def __init__(self, run_dir: Path, resumed: bool) -> None:
        self.run = RunFolder(run_dir)
        self.resumed = resumed
        self._started = False
        self._last_beat = 0.0

    def _beat(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero and time.monotonic() - self._last_beat >= HEARTBEAT_EVERY_S:
            self.run.beat()
            self._last_beat = time.monotonic()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = True
        if trainer.is_global_zero and self.resumed:
            self.run.record_process()
            self._last_beat = time.monotonic()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._beat(trainer)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._beat(trainer)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._beat(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # A new run is marked by nlpkit.training.trainer (or removed, without a checkpoint). An
        # interrupted one (Ctrl-C) is left without an end status: `nlpkit runs` finds its process gone.
        if (self.resumed and self._started and trainer.is_global_zero
                and not isinstance(exception, (KeyboardInterrupt, SystemExit))):
            self.run.mark_failed(" ".join(str(exception).split()) or type(exception).__name__)

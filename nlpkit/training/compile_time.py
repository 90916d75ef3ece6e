"""Reports what ``training.compile`` cost: the first epoch's batches beyond their median time."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

__all__ = ["CompileTime"]

log = logging.getLogger("nlpkit")


class CompileTime(pl.Callback):
    """Estimates the compile time from the first epoch's training batches and logs it.

    ``torch.compile`` compiles lazily: in the first forward and backward pass
    of the compiled layers, and again for each new input shape until it
    compiles one graph for all lengths (batches grouped by length bring
    several). Every batch that compiles runs far over the median batch, so
    the sum of each batch's time above the median is the estimate, kept in
    ``compile_seconds``. It counts the training batches only (validation, in
    eval mode, compiles its own graphs), without reading torch's private
    compile counters.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._times: list[float] = []
        self.compile_seconds: float | None = None

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._started = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.compile_seconds is None:
            self._times.append(time.perf_counter() - self._started)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.compile_seconds is not None or not self._times:
            return
        median = statistics.median(self._times)
        self.compile_seconds = sum(t - median for t in self._times if t > median)
        if trainer.is_global_zero:
            slow = sum(t > 2 * median for t in self._times)
            log.info("training.compile: about %.1f s compiling in the first epoch (%d of %d batches took over twice "
                     "the median %.2f s)", self.compile_seconds, slow, len(self._times), median)

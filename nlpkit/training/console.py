"""What ``nlpkit run`` shows while it trains.

- A start block: the run folder, task, backbone and its parameter counts,
  precision, devices, data sizes and steps (:class:`RunConsole`, when
  training starts).
- A progress bar with the training loss, tokens per second and the epoch's
  ETA: Lightning's ``RichProgressBar`` when the output is a terminal (or a
  notebook). Otherwise (CI logs, a file) no bar: a bar redrawn with carriage
  returns turns into thousands of lines or one unreadable one there. A recipe
  that asks for a bar anyway (``trainer.enable_progress_bar: true``) gets
  Lightning's tqdm bar.
- A row of a small table after each validation: epoch, step, time, losses,
  the task's metrics and the throughput, so a log without a bar still shows
  progress.

Everything but the bar goes through the ``nlpkit`` logger (the CLI prints it;
``nlpkit run --quiet`` silences it). The throughput (:class:`Throughput`)
counts the tokens the task says a batch holds (``Task.batch_tokens``) and is
logged as ``train_tokens_per_second``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from rich.progress import BarColumn
from typing_extensions import override

from nlpkit.recipe import Recipe

if TYPE_CHECKING:
    from nlpkit.training.module import TaskModule

__all__ = ["ConsoleOptions", "console_callbacks", "Throughput", "RunConsole", "RichBar", "TqdmBar",
           "TOKENS_PER_SECOND"]

log = logging.getLogger("nlpkit")

TOKENS_PER_SECOND = "train_tokens_per_second"


def _count(number: float) -> str:
    """1234567 -> '1.23M': parameter counts and rates, short."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= size:
            return f"{number / size:.3g}{suffix}"
    return f"{number:.0f}"


def _heading(metric: str) -> str:
    """A validation table heading: the losses as they are logged, the task's metrics without ``val_``."""
    return metric if metric.endswith("_loss") else metric.removeprefix("val_")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, minutes = whole // 3600, whole // 60 % 60
    return f"{hours}:{minutes:02d}:{whole % 60:02d}" if hours else f"{minutes}:{whole % 60:02d}"


class Throughput(pl.Callback):
    """Logs ``train_tokens_per_second``: the tokens of the last ``window`` training batches over their time.

    The time of a batch runs from the end of the one before (so that loading
    and collating it counts) to its own end; time spent validating does not
    count. In a multi-process run the first process's rate is multiplied by
    the number of processes (they train on batches alike in size; adding up
    the exact counts would cost a collective every step).

    Not Lightning's ``ThroughputMonitor``: it reports nothing until its window
    is full, which a short run never reaches, logs rows of its own into the
    history at batch counts rather than optimizer steps, and does not put
    the rate in the progress bar.

    Args:
        window: batches the rate is averaged over.
    """

    def __init__(self, window: int = 20) -> None:
        self.window: deque[tuple[int, float]] = deque(maxlen=window)
        self._last: float | None = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last is None:  # the first batch after a start or a validation: timed from here
            self._last = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        tokens = cast("TaskModule", pl_module).task.batch_tokens(batch)
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: the batch has ended only once they have
        now = time.perf_counter()
        seconds, self._last = now - (self._last or now), now
        self.window.append((tokens, seconds))
        counted, spent = sum(t for t, _ in self.window), sum(s for _, s in self.window)
        if counted and spent > 0:
            pl_module.log(TOKENS_PER_SECOND, counted / spent * trainer.world_size, on_step=True, on_epoch=False,
                          prog_bar=True, batch_size=1)


def _bar_items(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a progress bar shows: the training loss and the throughput (the validation table has the rest)."""
    shown: dict[str, Any] = {}
    if "train_loss" in metrics:
        shown["loss"] = metrics["train_loss"]
    if TOKENS_PER_SECOND in metrics:
        shown["tokens/s"] = _count(float(metrics[TOKENS_PER_SECOND]))
    return shown


class RichBar(RichProgressBar):
    """Lightning's rich progress bar (elapsed and remaining time of the epoch) with the loss and tokens/s.

    Its batches/s column is left out (tokens/s says how fast) and its bar
    sized so that the whole line stays short of the terminal's width: a line
    of exactly that width wraps in some terminals and the bar, redrawn, then
    overwrites the line above it.
    """

    REDRAW_EVERY_S = 0.1

    _drawn = 0.0

    @override
    def refresh(self, hard: bool = False) -> None:
        # Redrawn here, in the training loop's thread, never by Lightning's refresh thread: a redraw
        # from that thread can interleave with a message printed above the bar (the validation
        # table's rows) and leave a stale copy of the bar in place of the message.
        now = time.monotonic()
        if self.progress is not None and (hard or now - self._drawn >= self.REDRAW_EVERY_S):
            self.progress.refresh()
            self._drawn = now

    @override
    def configure_columns(self, trainer: pl.Trainer) -> list:
        columns = [column for column in super().configure_columns(trainer)
                   if type(column).__name__ != "ProcessingSpeedColumn"]
        epochs = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else 0
        batches = trainer.num_training_batches
        rest = (max(len(f"Epoch {epochs}/{epochs}"), len(self.validation_description))  # the description
                + 2 * len(str(batches if math.isfinite(batches) else 0)) + 1  # 12/345
                + len("0:00:00 • 0:00:00") + len("loss: 0.000 tokens/s: 123k")
                + len(columns) + 1)  # the spaces between columns, and one to spare
        width = self._console.width if self._console is not None else 80
        for column in columns:
            if isinstance(column, BarColumn):
                column.bar_width = max(5, min(40, width - rest))
        return columns

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _bar_items(super().get_metrics(trainer, pl_module))


class TqdmBar(TQDMProgressBar):
    """Lightning's tqdm progress bar with the loss and tokens/s."""

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _bar_items(super().get_metrics(trainer, pl_module))


@dataclass
class ConsoleOptions:
    """How ``nlpkit run`` shows a run.

    Attributes:
        quiet: no start block, bar or validation table (``nlpkit run --quiet``).
        precision_auto: the recipe said ``training.precision: auto`` (the start block says so).
        resumed_from: the checkpoint a resumed run continues from.
    """

    quiet: bool = False
    precision_auto: bool = False
    resumed_from: Path | None = None


class RunConsole(pl.Callback):
    """Logs the start block when training starts and a table row after each validation (first process only).

    Args:
        recipe: the validated recipe, precision resolved.
        run_dir: the run folder.
        options: what the recipe said and whether the run resumes.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, options: ConsoleOptions) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.options = options
        self._columns: list[str] = []
        self._started = 0.0

    def start_block(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        """The lines that describe the run about to train."""
        module = cast("TaskModule", pl_module)
        recipe, task, model = self.recipe, module.task, module.model
        config = model.backbone.config
        parameters = list(model.parameters())
        total = sum(p.numel() for p in parameters)
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        origin = recipe.backbone.pretrained or recipe.backbone.preset or "custom"
        precision = f"{trainer.precision} (auto)" if self.options.precision_auto else str(trainer.precision)
        lines = [
            ("run folder", str(self.run_dir)),
            ("task", recipe.task),
            ("backbone", f"{origin}: {config.kind}, {config.num_layers} layer{'s' if config.num_layers != 1 else ''}, "
                         f"hidden {config.hidden_size}"),
            ("parameters", f"{_count(total)}, {_count(trainable)} trainable"),
            ("precision", precision),
            ("devices", self._devices(trainer)),
            ("data", self._data(trainer, task)),
            ("steps", self._steps(trainer)),
        ]
        if self.options.resumed_from is not None:
            lines.append(("resumed", f"from {self.options.resumed_from}"))
        return [f"{name:<11} {value}" for name, value in lines]

    @staticmethod
    def _devices(trainer: pl.Trainer) -> str:
        device = trainer.strategy.root_device
        name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        text = f"{trainer.num_devices} x {device.type}{name}"
        if trainer.num_nodes > 1:
            text += f" on each of {trainer.num_nodes} machines"
        if trainer.world_size > 1:
            text += f", {type(trainer.strategy).__name__.removesuffix('Strategy')}"
        return text

    @staticmethod
    def _data(trainer: pl.Trainer, task: Any) -> str:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, not declared
        splits, features = getattr(datamodule, "splits", {}), getattr(datamodule, "features", {})
        parts = []
        for name, split in splits.items():
            part = f"{name} {len(split):,}"
            if task.regroups_examples and name in features:  # language-model blocks, not examples, are trained on
                part += f" ({len(features[name]):,} sequences)"
            parts.append(part)
        return ", ".join(parts) + " examples"

    def _steps(self, trainer: pl.Trainer) -> str:
        training = self.recipe.training
        batches = trainer.num_training_batches
        accumulate = trainer.accumulate_grad_batches
        per_epoch = math.ceil(batches / accumulate) if math.isfinite(batches) else None
        size = f"at most {training.max_tokens:,} tokens" if training.max_tokens else f"{training.batch_size}"
        text = f"batches of {size}" + (f", {accumulate} a step" if accumulate > 1 else "")
        total = trainer.estimated_stepping_batches
        if per_epoch is not None:
            text += f"; {per_epoch:,} steps per epoch"
        if math.isfinite(total):
            text += f", {int(total):,} in all" + (f" ({trainer.max_epochs} epochs)" if trainer.max_epochs else "")
        return text

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()
        self._columns = []
        if trainer.is_global_zero:
            for line in self.start_block(trainer, pl_module):
                log.info(line)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        if not self._columns:
            # The task's own metrics (its class's names: those a recipe may monitor), not the
            # per-label or per-type scores an instance adds; metrics.csv holds those.
            module = cast("TaskModule", pl_module)
            scores = [*type(module.task).metric_names, *module.score_names]  # and what validation_scores adds
            names = ["train_loss", "val_loss", *(f"val_{name}" for name in scores)]
            self._columns = [name for name in names if name in metrics]
            log.info("  ".join(["epoch", "  step", "   time", *(f"{_heading(name):>8}" for name in self._columns),
                                "tokens/s"]))
        row = [f"{trainer.current_epoch:>5}", f"{trainer.global_step:>6}", f"{_duration(time.monotonic() - self._started):>7}"]
        row += [f"{metrics[name]:>{max(8, len(_heading(name)))}.4f}" if name in metrics
                else f"{'-':>{max(8, len(_heading(name)))}}" for name in self._columns]
        row.append(f"{_count(metrics[TOKENS_PER_SECOND]) if TOKENS_PER_SECOND in metrics else '-':>8}")
        log.info("  ".join(row))


def _shows_live_display() -> bool:
    """Whether standard output redraws in place: a terminal or a notebook."""
    from rich import get_console

    console = get_console()
    return bool(console.is_terminal or console.is_jupyter)


def console_callbacks(recipe: Recipe, run_dir: Path, options: ConsoleOptions) -> tuple[list[pl.Callback], dict[str, Any]]:
    """The callbacks that show a run, and the Trainer arguments that go with them.

    The recipe's ``trainer.enable_progress_bar`` and
    ``trainer.enable_model_summary`` win where set; Lightning's model summary
    is off by default (the start block gives the parameter counts; the
    summary's FLOPs columns are empty for these models).

    Returns:
        The callbacks, and Trainer arguments that replace the recipe's.
    """
    asked = recipe.trainer.get("enable_progress_bar")
    callbacks: list[pl.Callback] = [Throughput()]
    bar: pl.Callback | None = None
    if not options.quiet and asked is not False:
        if _shows_live_display():
            bar = RichBar()
        elif asked:
            bar = TqdmBar()
    if bar is not None:
        callbacks.append(bar)
    if not options.quiet:
        callbacks.append(RunConsole(recipe, run_dir, options))
    arguments = {"enable_progress_bar": bar is not None,
                 "enable_model_summary": bool(recipe.trainer.get("enable_model_summary", False))}
    return callbacks, arguments

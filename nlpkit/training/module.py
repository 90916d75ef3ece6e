"""The one LightningModule that trains, validates and tests any Task."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import Metric, MetricCollection
from typing_extensions import override

from nlpkit.recipe import OptimizationSection
from nlpkit.runs import SAMPLES_FILE
from nlpkit.tasks import Task, TaskModel
from nlpkit.finetuning import parameter_groups
from nlpkit.training.datamodule import STEP_TARGET_TOKENS

__all__ = ["TaskModule", "schedule_factor"]

log = logging.getLogger("nlpkit")


def schedule_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then linear / cosine decay or constant."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 1


def _without_step_tokens(batch: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """The batch as the task's collate made it, and the target tokens of the batch and of its optimizer step.

    The counts (None where the DataLoader made none: validation, a loss that
    is not a mean over tokens) come from ``StepTokensLoader``, which counted
    them before the batch moved to the device: no device sync to read them.
    """
    if STEP_TARGET_TOKENS not in batch:
        return batch, None
    rest = {key: value for key, value in batch.items() if key != STEP_TARGET_TOKENS}
    batch_tokens, step_tokens = batch[STEP_TARGET_TOKENS]
    return rest, (int(batch_tokens), int(step_tokens))


class TaskModule(pl.LightningModule):
    """Runs ``task`` on ``model``; knows the task only through the Task contract.

    Args:
        task: the task, with its state set up.
        model: backbone and head.
        optimization: the recipe's optimisation section (None when only evaluating).
        recipe: the resolved recipe, saved as hyperparameters in checkpoints.
    """

    def __init__(self, task: Task, model: TaskModel, optimization: OptimizationSection | None = None,
                 recipe: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.task = task
        self.model = model
        self.optimization = optimization
        # Not sent to the loggers: nlpkit.training.trackers logs the recipe, flattened, where each tracker keeps it.
        self.save_hyperparameters({"recipe": recipe or {}}, logger=False)
        # MetricCollection takes a dict of metrics or collections (dict is invariant: say so).
        metrics: dict[str, Metric | MetricCollection] = {**task.metrics()}
        if metrics:
            self.val_metrics: MetricCollection | None = MetricCollection(metrics, prefix="val_")
            self.test_metrics: MetricCollection | None = self.val_metrics.clone(prefix="test_")
        else:
            self.val_metrics = self.test_metrics = None
        self._step_tokens: tuple[int, int] | None = None  # (global step, its target tokens on all processes)
        self.score_names: list[str] = []  # what Task.validation_scores has reported, for the console's table

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        batch, counts = _without_step_tokens(batch)
        outputs = self.task.forward(self.model, batch)
        loss = self.task.loss(outputs, batch)
        batch_size = _batch_size(batch)
        # Validation and test losses are averaged over the epoch and all processes. The training loss
        # is logged per step and per process (a sync every step would cost a collective each step),
        # with no epoch mean: Lightning keeps no mean in a checkpoint, so a resumed run would log
        # another epoch mean than the uninterrupted one, or none (it logs after the epoch-end checkpoint).
        train = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=train, on_epoch=not train, prog_bar=True,
                 batch_size=batch_size, sync_dist=not train)
        metrics = {"val": self.val_metrics, "test": self.test_metrics}.get(stage)
        if metrics is not None:
            metrics.update(*self.task.evaluate_batch(self.model, batch, outputs))
        if train and counts is not None:
            return self._step_normalised(loss, *counts)
        return loss

    def _step_normalised(self, loss: torch.Tensor, batch_tokens: int, step_tokens: int) -> torch.Tensor:
        """The loss whose gradient is the step's summed token losses over the step's target tokens.

        ``loss`` is this batch's mean over its ``n`` target tokens; the step
        has ``N`` of them on all processes together. Lightning divides the
        training step's loss by ``accumulate_grad_batches`` (automatic
        optimisation's ``ClosureResult``: the same divisor for an epoch's
        shorter last step) and DDP averages the processes' gradients, so the
        sum over the step's batches and processes of
        ``loss * n / N * accumulate_grad_batches * world_size``, divided by
        both, is ``sum(token losses) / N``: every token of the step weighs
        alike, whatever the batch size, accumulation or devices. (A strategy
        that treats the loss otherwise, DeepSpeed, which accumulates itself,
        treats the mean of batch means alike: the factor corrects that mean.)
        """
        total = self._all_step_tokens(step_tokens)
        scale = batch_tokens / max(total, 1) * self.trainer.accumulate_grad_batches * self.trainer.world_size
        return loss * scale

    def _all_step_tokens(self, step_tokens: int) -> int:
        """The step's target tokens summed over the processes: one small all-reduce per optimizer step."""
        if self.trainer.world_size == 1:
            return step_tokens
        # global_step counts optimizer steps: the same for every batch of a step, on every process.
        if self._step_tokens is None or self._step_tokens[0] != self.global_step:
            count = torch.tensor(step_tokens, dtype=torch.long, device=self.device)
            total = self.trainer.strategy.reduce(count, reduce_op="sum")
            self._step_tokens = (self.global_step, int(total))
        return self._step_tokens[1]

    def _log_metrics(self, metrics: MetricCollection | None) -> None:
        """Log an epoch's metrics: each scalar, and each entry of a metric that computes a dict.

        The collection computes (synchronised across processes) rather than
        Lightning, which takes only scalar metrics: torchmetrics' ``SQuAD``
        computes ``{"exact_match", "f1"}``, logged as ``val_exact_match`` and
        ``val_f1`` (MetricCollection flattens the dict under its prefix).
        """
        if metrics is None or not any(metric.update_count for metric in metrics.values()):
            return  # no batch this epoch (a validation split of a few rows, limited batches)
        self.log_dict(metrics.compute(), prog_bar=True, sync_dist=False)
        metrics.reset()

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)
        if not self.trainer.sanity_checking:
            scores = self.task.validation_scores(self.model)
            if scores:  # every process computes the same scores on the same model: nothing to synchronise
                self.log_dict({f"val_{name}": float(value) for name, value in scores.items()}, prog_bar=True)
                self.score_names = list(dict.fromkeys([*self.score_names, *scores]))
        # Samples cost generation time: not during Lightning's sanity check, and in one process only.
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        lines = self.task.validation_samples(self.model)
        if not lines:
            return
        for line in lines:
            log.info("sample (step %d): %s", self.global_step, line)
        folder = Path(self.trainer.default_root_dir)
        if folder.is_dir():
            with (folder / SAMPLES_FILE).open("a", encoding="utf-8") as handle:
                handle.write(f"step {self.global_step}\n" + "".join(f"  {line}\n" for line in lines))

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Dropout draws from these generators: a resumed run must continue their streams
        # exactly where the checkpoint left them to reproduce the uninterrupted run.
        checkpoint["nlpkit_rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        # What the task counts while it trains (the generation task's validations, for sample_every).
        checkpoint["nlpkit_task_state"] = self.task.state()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("nlpkit_rng")
        if state is not None and self.trainer.training:
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])
        if "nlpkit_task_state" in checkpoint:
            self.task.load_state(checkpoint["nlpkit_task_state"])

    @override
    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        # bf16-mixed has no gradient scaler, so the fp32 gradients are clipped as they are. Lightning's
        # mixed-precision plugin would refuse the fused optimizer here only because of fp16's scaler.
        if gradient_clip_val and str(self.trainer.precision) == "bf16-mixed":
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @override
    def configure_optimizers(self) -> Any:
        opt = self.optimization or OptimizationSection()
        # No weight decay on biases and norm weights (vectors), as in BERT and GPT-2 training.
        groups = parameter_groups(self.model, opt.lr, opt.weight_decay, opt.layer_lr_decay)
        # One fused kernel for all tensors instead of a loop per tensor (measured: 0.06 s against
        # 0.36 s a BERT-base step for foreach under bf16 on this CPU). fp16 with a gradient scaler
        # keeps "foreach": a fused optimizer unscales inside its step, after clipping would have run.
        fused = str(self.trainer.precision) != "16-mixed"
        optimizer = torch.optim.AdamW(
            groups,
            lr=opt.lr,
            betas=(opt.betas[0], opt.betas[1]),
            eps=opt.eps,
            fused=fused,
            foreach=None if fused else True,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = opt.warmup_steps or int(opt.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule_factor(step, total, warmup, opt.schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""The one LightningDataModule: task features from ``datasets`` splits, dynamic padding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from typing_extensions import override

import torch

from nlpkit.data import BatchedFeatures, EpochSampler, LengthGroupedSampler, evaluation_order, token_budget_batches
from nlpkit.recipe import TrainingSection
from nlpkit.tasks import Task

__all__ = ["STEP_TARGET_TOKENS", "StepTokensLoader", "TaskDataModule"]

# The key under which a training batch carries (its own target tokens, those of its whole optimizer step in
# this process), counted on the CPU before the batch moves to the device. No collate makes it; TaskModule
# takes it out before the task sees the batch.
STEP_TARGET_TOKENS = "step_target_tokens"


class StepTokensLoader(DataLoader):
    """A DataLoader whose batches carry the target-token count of their optimizer step.

    It reads the ``accumulate`` batches of each optimizer step ahead, counts
    their targets with ``target_tokens`` and serves each batch with its own
    and the step's count under :data:`STEP_TARGET_TOKENS`, so that the loss can be
    normalised over the whole step (``TaskModule.training_step``) without
    asking the sampler about batches to come. Hugging Face's Trainer does the
    same (``get_batch_samples``, ``num_items_in_batch``).

    Steps follow Lightning's: it steps the optimizer after every
    ``accumulate``-th batch of an epoch, counted from the epoch's start, and
    at the epoch's last batch (the last of ``limit`` batches: Lightning's
    ``limit_train_batches``), so the last step of an epoch may have fewer
    batches and counts only those. ``skipped`` says how many of the epoch's
    batches the sampler left out because they were trained before a resume;
    a checkpoint is written after an optimizer step, so a resumed epoch
    starts at a step's first batch.

    A DataLoader subclass (not a wrapper around one) so that Lightning still
    sees a DataLoader: it re-creates it with a distributed sampler under DDP,
    with the arguments given here, and sets the sampler's epoch.
    """

    def __init__(self, *args: Any, target_tokens: Callable[[dict[str, Any]], int | None], accumulate: int = 1,
                 skipped: Callable[[], int] | None = None, limit: int | float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_tokens = target_tokens
        self.accumulate = accumulate
        self.skipped = skipped
        self.limit = limit

    def _epoch_batches(self) -> float:
        # Lightning's reading of limit_train_batches (_parse_num_batches): a count, or a fraction of the batches.
        length = len(self)
        if isinstance(self.limit, int):
            return min(length, self.limit)
        return int(length * self.limit) if self.limit < 1.0 else length

    # torch types DataLoader.__iter__ as its own iterator classes; any iterator serves Lightning.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._steps(super().__iter__())

    def _steps(self, batches: Iterator[Any]) -> Iterator[Any]:
        first = next(batches, None)
        if first is None:
            return
        # Only now has the sampler started its pass over the epoch and decided what it skips.
        index = self.skipped() if self.skipped is not None else 0  # the epoch's index of the next batch
        total = self._epoch_batches()
        pending = [first]
        while pending:
            # This step's batches: up to the next multiple of `accumulate`, or the epoch's end.
            end = min((index // self.accumulate + 1) * self.accumulate, total)
            window = pending
            while index + len(window) < end:
                batch = next(batches, None)
                if batch is None:
                    break
                window.append(batch)
            counts = [self.target_tokens(batch) for batch in window]
            if any(count is None for count in counts):  # not a token-level loss: the batches as they are
                yield from window
            else:
                step = sum(count for count in counts if count is not None)
                for batch, count in zip(window, counts):
                    yield {**batch, STEP_TARGET_TOKENS: (count, step)}
            index += len(window)
            batch = next(batches, None) if index < total else None
            pending = [] if batch is None else [batch]


class TaskDataModule(pl.LightningDataModule):
    """Serves ``splits`` (examples with the task's field names) as padded batches.

    Args:
        task: the task whose ``prepare`` and ``collate`` are used.
        splits: split name -> ``datasets.Dataset`` of examples.
        training: batch sizes, workers and seed.
        group_by_length: batch examples of similar length together.
    """

    def __init__(self, task: Task, splits: Any, training: TrainingSection, group_by_length: bool = False) -> None:
        super().__init__()
        self.task = task
        self.splits = splits
        self.training = training
        self.group_by_length = group_by_length
        self.features: dict[str, Any] = {}
        self._resume: dict[str, int] | None = None

    @override
    def prepare_data(self) -> None:
        # Runs once per machine: fills the datasets cache that setup() then reads.
        for dataset in self.splits.values():
            self.task.prepare(dataset)

    @override
    def setup(self, stage: str) -> None:
        if not self.features:
            self.features = {name: self.task.prepare(dataset) for name, dataset in self.splits.items()}

    def _loader(self, split: str, train: bool) -> DataLoader:
        features = self.features[split]
        size = self.training.batch_size if train else (self.training.eval_batch_size or self.training.batch_size)
        batch_size: int | None = size
        sampler: EpochSampler | None = None
        if train and self.training.max_tokens is not None:
            lengths = [self.task.feature_length(f) for f in features]
            features = BatchedFeatures(features, token_budget_batches(lengths, self.training.max_tokens, self.training.seed))
            sampler = EpochSampler(len(features), batch_size=1, seed=self.training.seed)
            batch_size = None  # each item is a batch already
            if self._resume is not None:
                sampler.resume(self._resume["epoch"], self._resume["batches"])
        elif train:
            if self.group_by_length:
                lengths = [self.task.feature_length(f) for f in features]
                sampler = LengthGroupedSampler(lengths, size, seed=self.training.seed)
            else:
                sampler = EpochSampler(len(features), size, seed=self.training.seed)
            if self._resume is not None:
                sampler.resume(self._resume["epoch"], self._resume["batches"])
        order: list[int] | None = None
        if not train and self._whole(split):
            # Not under limit_val/test_batches, which must keep taking the split's first batches.
            order = evaluation_order([self.task.feature_length(f) for f in features])
        arguments: dict[str, Any] = {}
        loader: type[DataLoader] = DataLoader
        if train and self.trainer is not None and type(self.task).target_tokens is not Task.target_tokens:
            loader = StepTokensLoader
            arguments = {"target_tokens": self.task.target_tokens, "accumulate": self.trainer.accumulate_grad_batches,
                         "skipped": lambda: sampler.skipped if sampler is not None else 0,
                         "limit": self.trainer.limit_train_batches}
        return loader(
            features,
            batch_size=batch_size,
            sampler=sampler if sampler is not None else order,
            collate_fn=self.task.collate,
            num_workers=self.training.num_workers,
            persistent_workers=self.training.num_workers > 0,
            # A DataLoader draws its workers' base seed from this generator, or else from
            # torch's global one: that draw would shift dropout's random numbers after a resume.
            generator=torch.Generator().manual_seed(self.training.seed),
            **arguments,
        )

    def _whole(self, split: str) -> bool:
        """Whether the trainer evaluates all of ``split`` (no ``limit_val_batches`` / ``limit_test_batches``)."""
        if self.trainer is None:
            return True
        limit = self.trainer.limit_test_batches if split == "test" else self.trainer.limit_val_batches
        return isinstance(limit, float) and limit == 1.0

    @override
    def state_dict(self) -> dict[str, int]:
        """Where training stands in the epoch, saved in every checkpoint (mid-epoch ones too)."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        # Lightning declares _Progress.current as a _ReadyCompletedTracker; a batch progress's is a _ProcessedTracker.
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}  # type: ignore[attr-defined]

    @override
    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        # Restored before the train DataLoader is made: its sampler skips the batches already seen.
        self._resume = dict(state_dict) if state_dict else None

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

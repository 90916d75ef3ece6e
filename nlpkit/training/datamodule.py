"""The one LightningDataModule: task features from ``datasets`` splits, dynamic padding."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from typing_extensions import override

import torch

from nlpkit.data import BatchedFeatures, EpochSampler, LengthGroupedSampler, token_budget_batches
from nlpkit.recipe import TrainingSection
from nlpkit.tasks import Task

__all__ = ["TaskDataModule"]


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
        sampler = None
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
        return DataLoader(
            features,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.task.collate,
            num_workers=self.training.num_workers,
            persistent_workers=self.training.num_workers > 0,
            # A DataLoader draws its workers' base seed from this generator, or else from
            # torch's global one: that draw would shift dropout's random numbers after a resume.
            generator=torch.Generator().manual_seed(self.training.seed),
        )

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

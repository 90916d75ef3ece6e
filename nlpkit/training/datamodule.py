"""The one LightningDataModule: task features from ``datasets`` splits, dynamic padding."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from typing_extensions import override

from nlpkit.data import LengthGroupedSampler
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
        batch_size = self.training.batch_size if train else (self.training.eval_batch_size or self.training.batch_size)
        sampler = None
        if train and self.group_by_length:
            lengths = [self.task.feature_length(f) for f in features]
            sampler = LengthGroupedSampler(lengths, batch_size, seed=self.training.seed)
        return DataLoader(
            features,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=self.task.collate,
            num_workers=self.training.num_workers,
            persistent_workers=self.training.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

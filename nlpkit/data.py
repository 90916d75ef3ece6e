"""Loading examples with ``datasets``: local files by format, hub datasets when online.

Splits are read into a ``datasets.DatasetDict`` (Arrow files, memory-mapped and
cached by ``datasets``), their columns are checked and renamed to the task's
field names, and every required cell is checked so that a bad row is reported
by file and row instead of failing deep inside training.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch.utils.data import Sampler

from nlpkit.errors import NlpkitError

if TYPE_CHECKING:
    import datasets

    from nlpkit.recipe import DataSection
    from nlpkit.registry import Registry

__all__ = ["FORMATS", "load_splits", "select_columns", "EpochSampler", "LengthGroupedSampler", "quiet_datasets"]

SPLITS = ("train", "validation", "test")


def quiet_datasets() -> None:
    """Silence ``datasets``' progress bars and info logs: nlpkit reports what matters."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _load_builder(builder: str, files: dict[str, str], options: dict[str, Any]) -> datasets.DatasetDict:
    import datasets

    quiet_datasets()
    try:
        return datasets.load_dataset(builder, data_files=files, **options)
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError, TypeError) as error:
        cause = error.__cause__ or error
        message = " ".join(str(cause).split())[:300]
        raise NlpkitError(f"{', '.join(files.values())}: cannot read as {builder}: {message}") from None


def load_csv(files: dict[str, str], **options: Any) -> datasets.DatasetDict:
    """Comma-separated values with a header row."""
    return _load_builder("csv", files, options)


def load_tsv(files: dict[str, str], **options: Any) -> datasets.DatasetDict:
    """Tab-separated values with a header row; quotes are ordinary characters."""
    options.setdefault("delimiter", "\t")
    # csv.QUOTE_NONE: TSV corpora (GLUE) hold unbalanced quotes inside sentences.
    options.setdefault("quoting", 3)
    return _load_builder("csv", files, options)


def load_json(files: dict[str, str], **options: Any) -> datasets.DatasetDict:
    """JSON lines (one object per line) or a JSON array of objects."""
    return _load_builder("json", files, options)


def load_parquet(files: dict[str, str], **options: Any) -> datasets.DatasetDict:
    """Apache Parquet files."""
    return _load_builder("parquet", files, options)


FORMATS = {"csv": load_csv, "tsv": load_tsv, "json": load_json, "jsonl": load_json, "parquet": load_parquet}


def load_splits(data: DataSection, formats: Registry[Any]) -> datasets.DatasetDict:
    """Read the recipe's splits: local files through the format registry, or a hub dataset."""
    import datasets

    quiet_datasets()
    if data.hub is not None:
        names = {split: getattr(data, split) or split for split in SPLITS}
        try:
            loaded = datasets.load_dataset(data.hub, **data.options)
        except Exception as error:  # offline: ConnectionError, OfflineModeIsEnabled, hub errors
            message = " ".join(str(error).split())[:200]
            raise NlpkitError(
                f"data.hub: cannot load '{data.hub}' from the hub ({message}); "
                f"when offline, download it once or pass local files with data.train and data.validation"
            ) from None
        splits = {}
        for split, name in names.items():
            if name in loaded:
                splits[split] = loaded[name]
            elif split != "test":
                raise NlpkitError(f"data.{split}: hub dataset '{data.hub}' has no split '{name}'; found: {', '.join(loaded)}")
        return datasets.DatasetDict(splits)
    loader = formats.get(data.format)
    # One call per file: splits may differ in extra columns (a test file with an id
    # column) or in inferred types, which one multi-file builder refuses.
    splits = {}
    for split in SPLITS:
        path = getattr(data, split)
        if path is not None:
            splits[split] = loader({split: path}, **dict(data.options))[split]
    return datasets.DatasetDict(splits)


def select_columns(
    splits: datasets.DatasetDict,
    data: DataSection,
    required: Sequence[str],
    optional: Sequence[str] = (),
) -> datasets.DatasetDict:
    """Rename the data's columns to the task's field names and keep only those.

    Args:
        splits: the loaded splits.
        data: the recipe's data section (its ``columns`` maps field -> column).
        required: fields every split must have.
        optional: fields kept when present (required when named in ``columns``).

    Raises:
        NlpkitError: a missing column (listing the columns found) or an empty
            required cell (naming the file and row).
    """
    import datasets

    out = {}
    for split, dataset in splits.items():
        where = getattr(data, split) or f"{data.hub}[{split}]"
        fields = list(required) + [f for f in optional if f in data.columns or f in dataset.column_names]
        mapping = {}
        for name in fields:
            column = data.columns.get(name, name)
            if column not in dataset.column_names:
                hint = f" (set data.columns.{name})" if name not in data.columns else f" (data.columns.{name})"
                raise NlpkitError(
                    f"{where}: missing column '{column}' for the task's '{name}'{hint}; "
                    f"found: {', '.join(dataset.column_names)}"
                )
            mapping[column] = name
        dataset = dataset.select_columns(list(mapping)).rename_columns({c: n for c, n in mapping.items() if c != n})
        for name in fields:
            values = dataset[name]
            for row, value in enumerate(values):
                if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value)):
                    raise NlpkitError(f"{where}: row {row + 1}: empty '{data.columns.get(name, name)}'")
        out[split] = dataset
    return datasets.DatasetDict(out)


class EpochSampler(Sampler[int]):
    """A random order per epoch, drawn from ``seed + epoch`` alone, that can resume mid-epoch.

    Its own generator (not torch's global one) makes the order of every epoch
    reproducible, so an interrupted run that is resumed sees the same batches as
    an uninterrupted one. ``resume(epoch, batches)`` makes the next pass over
    that epoch start after its first ``batches`` batches: the skipped examples
    are never loaded, not replayed one by one. Lightning calls ``set_epoch``.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        self._resume = (epoch, batches)

    def __len__(self) -> int:
        return self.size

    def order(self, generator: torch.Generator) -> list[int]:
        """All indices of one epoch, in the order they are served."""
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order(torch.Generator().manual_seed(self.seed + self.epoch))
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] * self.batch_size :]
        self._resume = None
        yield from order


class LengthGroupedSampler(EpochSampler):
    """Random order, but examples of similar length share a batch.

    Shuffles, then sorts by length inside chunks of 50 batches (the scheme of
    ``transformers``' ``LengthGroupedSampler`` and fairseq's buckets): batches
    need little padding yet their order stays random.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, chunk_batches: int = 50) -> None:
        super().__init__(len(lengths), batch_size, seed)
        self.lengths = list(lengths)
        self.chunk = batch_size * chunk_batches

    def order(self, generator: torch.Generator) -> list[int]:
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        chunks = [
            sorted(order[i : i + self.chunk], key=lambda j: -self.lengths[j]) for i in range(0, len(order), self.chunk)
        ]
        # Shuffle whole batches so long batches do not always come first in a chunk. A short
        # batch stays last: anywhere else it would shift every later DataLoader batch
        # across two length groups.
        batches = [c[i : i + self.batch_size] for c in chunks for i in range(0, len(c), self.batch_size)]
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        out = [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]
        return out + (short or [])

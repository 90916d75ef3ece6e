"""Loading examples with ``datasets``: local files by format, hub datasets when online.

Splits are read into a ``datasets.DatasetDict`` (Arrow files, memory-mapped and
cached by ``datasets``), their columns are checked and renamed to the task's
field names, and every required cell is checked so that a bad row is reported
by file and row instead of failing deep inside training.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from nlpkit.chat_data import as_conversations
from nlpkit.errors import NlpkitError
from nlpkit.registry import suggest

if TYPE_CHECKING:
    import datasets

    from nlpkit.recipe import DataSection
    from nlpkit.registry import Registry
    from nlpkit.tasks import Task

__all__ = [
    "evaluation_order",
    "FORMATS",
    "load_splits",
    "select_columns",
    "select_task_columns",
    "EpochSampler",
    "LengthGroupedSampler",
    "token_budget_batches",
    "BatchedFeatures",
    "quiet_datasets",
]

SPLITS = ("train", "validation", "test")


def quiet_datasets() -> None:
    """Silence ``datasets``' progress bars and info logs: nlpkit reports what matters."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@contextlib.contextmanager
def _datasets_silent() -> Iterator[None]:
    """While reading files: ``datasets`` logs a failed read at ERROR before raising, and nlpkit says it better."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _load_builder(builder: str, files: dict[str, str], options: dict[str, Any]) -> datasets.DatasetDict:
    import datasets

    quiet_datasets()
    for path in files.values():
        _check_file(path, builder)
    try:
        with _datasets_silent():
            return datasets.load_dataset(builder, data_files=files, **options)
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError, TypeError) as error:
        cause = error.__cause__ or error
        for path in files.values():
            found = _diagnose(builder, path, options)
            if found:
                raise NlpkitError(found) from None
        message = " ".join(str(cause).split())[:300]
        raise NlpkitError(f"{', '.join(files.values())}: cannot read as {builder}: {message}") from None


def _check_file(path: str, builder: str) -> None:
    file = Path(path)
    if file.is_dir():
        raise NlpkitError(f"{path} is a folder; expected a {builder} file")
    if not file.is_file():
        raise NlpkitError(f"file '{path}' does not exist")
    if file.stat().st_size == 0:
        raise NlpkitError(f"{path}: empty file; expected {_EXPECTED.get(builder, 'rows of data')}")


_EXPECTED = {"csv": "a header row, then one row per example", "json": "one JSON object per line (or a JSON array)",
             "text": "text"}


def _diagnose(builder: str, path: str, options: dict[str, Any]) -> str | None:
    """What is wrong with a file ``datasets`` could not read, naming the line; None if nothing is found.

    Only run once reading has failed: the file is read again with the standard
    library (``csv``, ``json``), which reports lines where pandas and pyarrow
    report byte positions or nothing.
    """
    data = Path(path).read_bytes()
    if builder == "parquet":
        return None if data[:4] == data[-4:] == b"PAR1" else f"{path}: not a Parquet file (no Parquet magic bytes)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        return f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8"
    if builder == "csv":
        return _diagnose_csv(path, text, options)
    if builder == "json":
        return _diagnose_json(path, text)
    return None


def _diagnose_csv(path: str, text: str, options: dict[str, Any]) -> str | None:
    delimiter = options.get("delimiter", options.get("sep", ","))
    quoting = options.get("quoting", csv.QUOTE_MINIMAL)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if not header:
        return f"{path}: no header row; expected {_EXPECTED['csv']}"
    rows = 0
    for row in reader:
        if not row:
            continue
        rows += 1
        if len(row) != len(header):
            return (f"{path}:{reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                    f"({delimiter!r}-separated)")
    return f"{path}: a header row but no data rows" if rows == 0 else None


def _diagnose_json(path: str, text: str) -> str | None:
    if not text.strip():
        return f"{path}: no data; expected {_EXPECTED['json']}"
    if text.lstrip()[:1] == "[":
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"{path}:{error.lineno}: not valid JSON ({error.msg})"
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            return f"{path}:{number}: not valid JSON ({error.msg}); expected one JSON object per line"
        if not isinstance(row, dict):
            return f"{path}:{number}: expected a JSON object, got {type(row).__name__}"
    return None


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


def load_chat(files: dict[str, str], columns: dict[str, str] | None = None, **options: Any) -> datasets.DatasetDict:
    """Conversations: JSON rows of ``messages``, or of an instruction layout (``nlpkit.chat_data``), as ``messages``.

    ``columns`` is the recipe's ``data.columns`` (chat field -> column), which this format reads itself.
    """
    return as_conversations(_load_builder("json", files, options), files, columns)


load_chat.reads_columns = True  # type: ignore[attr-defined]  # load_splits passes it data.columns

_DOCUMENTS = {"paragraph": "paragraph", "line": "line", "file": "document"}


def load_text(files: dict[str, str], documents: str = "paragraph", **options: Any) -> datasets.DatasetDict:
    """Plain text files: one example per document, in a column ``text``.

    A document is, with ``documents: paragraph`` (the default), a run of lines
    that a blank line ends; with ``line``, one line; with ``file``, the whole
    file. Empty documents are dropped. Language modelling joins documents with
    an end-of-text token, so a document boundary is where the model learns
    that one text ends and an unrelated one begins.
    """
    if documents not in _DOCUMENTS:
        raise NlpkitError(f"data.options.documents: expected one of {', '.join(_DOCUMENTS)}, got {documents!r}"
                          f"{suggest(str(documents), list(_DOCUMENTS))}")
    loaded = _load_builder("text", files, {"sample_by": _DOCUMENTS[documents], **options})
    return loaded.filter(lambda row: bool(row["text"].strip()), desc="dropping empty documents")


FORMATS = {"csv": load_csv, "tsv": load_tsv, "json": load_json, "jsonl": load_json, "parquet": load_parquet,
           "text": load_text, "chat": load_chat}


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
    if data.format is None:  # load_recipe sets it from the training file's extension
        raise NlpkitError("data.format: no format given, and none taken from a file extension")
    loader = formats.get(data.format)
    # One call per file: splits may differ in extra columns (a test file with an id
    # column) or in inferred types, which one multi-file builder refuses.
    # A format that gathers several columns into one field (chat: user + assistant -> messages) reads
    # data.columns itself; every other format's columns are renamed afterwards, by select_columns.
    columns = {"columns": dict(data.columns)} if getattr(loader, "reads_columns", False) else {}
    splits = {}
    for split in SPLITS:
        path = getattr(data, split)
        if path is not None:
            splits[split] = loader({split: path}, **dict(data.options), **columns)[split]
            if len(splits[split]) == 0:
                raise NlpkitError(f"{path}: no rows (data.{split} needs examples)")
    if data.validation_split is not None:
        splits["train"], splits["validation"] = carve_validation(splits["train"], data.validation_split, data.train)
    return datasets.DatasetDict(splits)


def carve_validation(train: datasets.Dataset, fraction: float, where: str | None = None) -> tuple[Any, Any]:
    """Split the last ``fraction`` of the training rows off as validation, in file order.

    The end of the file rather than a random sample, as nanoGPT splits its
    text: for running text (documents of one book) a random split would put
    neighbouring passages on both sides.

    Returns:
        The remaining training rows and the validation rows (at least one each).
    """
    size = round(len(train) * fraction)
    if size < 1 or size >= len(train):
        raise NlpkitError(f"data.validation_split: {fraction} of the {len(train)} rows of {where or 'data.train'} "
                          f"leaves no {'validation' if size < 1 else 'training'} rows")
    cut = len(train) - size
    return train.select(range(cut)), train.select(range(cut, len(train)))


def select_task_columns(splits: datasets.DatasetDict, data: DataSection, task_cls: type[Task]) -> datasets.DatasetDict:
    """:func:`select_columns` with the task's fields: its inputs (for the layout the data holds) and targets."""
    known = [*task_cls.input_columns, *task_cls.optional_columns]
    columns = next(iter(splits.values())).column_names if splits else []
    present = [name for name in known if data.columns.get(name, name) in columns]
    return select_columns(splits, data, [*task_cls.input_fields(present), *task_cls.target_columns],
                          [name for name in known if name not in task_cls.input_fields(present)], text=known)


def select_columns(
    splits: datasets.DatasetDict,
    data: DataSection,
    required: Sequence[str],
    optional: Sequence[str] = (),
    text: Sequence[str] = (),
) -> datasets.DatasetDict:
    """Rename the data's columns to the task's field names and keep only those.

    Args:
        splits: the loaded splits.
        data: the recipe's data section (its ``columns`` maps field -> column).
        required: fields every split must have.
        optional: fields kept when present (required when named in ``columns``).
        text: fields that hold text: a column of numbers there (CSV readers
            infer ``int64`` for ``1, 2, 3``) is read as strings.

    Raises:
        NlpkitError: a missing column (listing the columns found) or an empty
            required cell (naming the file and row).
    """
    import datasets

    out = {}
    for split, dataset in splits.items():
        where = describe_split(data, split)
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
            if name in text:
                dataset = _as_text(dataset, name)
            values = dataset[name]
            for row, value in enumerate(values):
                if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value)):
                    raise NlpkitError(f"{where}: row {row + 1}: empty '{data.columns.get(name, name)}'")
        out[split] = dataset
    return datasets.DatasetDict(out)


def _as_text(dataset: datasets.Dataset, name: str) -> datasets.Dataset:
    """Cast a column of numbers (or of lists of numbers: pre-split words) to strings."""
    import dataclasses

    import datasets

    feature = dataset.features[name]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string"):
        return dataset.cast_column(name, datasets.Value("string"))
    if isinstance(inner, datasets.Value) and inner.dtype not in ("string", "large_string"):
        return dataset.cast_column(name, dataclasses.replace(feature, feature=datasets.Value("string")))
    return dataset


def describe_split(data: DataSection, split: str) -> str:
    """Where a split's rows come from, for messages: its file, the carved end of the training file, a hub split."""
    if split == "validation" and data.validation_split is not None:
        return f"{data.train} (its last {data.validation_split:g})"
    return getattr(data, split) or f"{data.hub}[{split}]"


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
        self.skipped = 0  # the batches the latest pass left out, trained before a resume

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
        self.skipped = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            self.skipped = self._resume[1]
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


def evaluation_order(lengths: Sequence[int]) -> list[int]:
    """Indices in order of length (ties in file order): the order validation, test and ``evaluate`` batch in.

    A batch pads to its longest example, and the metrics add up over examples
    in any order (SST-2 dev, MiniLM in bf16: 5.6 s a validation pass in file
    order under a profiler; the report's predictions over the same split, in
    this order, 3.1 s). A loss that is a mean over each batch's tokens
    depends on how examples are batched, so training's validation and
    ``evaluate`` batch alike.
    """
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Group examples into batches of at most ``max_tokens`` padded tokens (fairseq's ``max_tokens``).

    Examples are sorted by length (equal lengths in a seeded random order), then
    cut greedily so that ``len(batch) * longest_in_batch <= max_tokens``: short
    sentences come many to a batch, long ones few, and padding is minimal. An
    example longer than the budget on its own gets a batch to itself rather
    than being dropped.

    The batches are formed once; :class:`EpochSampler` over them then gives
    each epoch its own batch order (the scheme of fairseq's ``batch_by_size``).

    Args:
        lengths: tokens per example (``Task.feature_length``).
        max_tokens: the budget of padded tokens per batch.
        seed: orders examples of equal length.

    Returns:
        Lists of example indices, shortest examples first.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    order = sorted(shuffled, key=lambda i: lengths[i])  # stable: ties keep their random order
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so this example is the longest of the batch it joins.
        if current and (len(current) + 1) * max(lengths[index], 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class BatchedFeatures(Dataset):
    """Features served a whole batch per item: ``dataset[i]`` is the list of batch ``i``'s features.

    A DataLoader over it (``batch_size=None``) collates each item on its own,
    and Lightning's distributed sampler then splits whole batches between
    processes, each process getting the same number.
    """

    def __init__(self, features: Any, batches: list[list[int]]) -> None:
        self.features = features
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[Any]:
        return [self.features[i] for i in self.batches[index]]

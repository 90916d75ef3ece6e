"""Tests for nlpkit.data: reading splits by format, checking and renaming columns, length-grouped batches."""

from __future__ import annotations

import json
import re
import random
import statistics
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub.constants
import pytest
from torch.utils.data import DataLoader

from nlpkit import NlpkitError
from nlpkit.data import FORMATS, BatchedFeatures, LengthGroupedSampler, load_splits, select_columns, token_budget_batches
from nlpkit.recipe import DataSection
from nlpkit.registry import Registry
from tests.helpers import pair_rows, sentiment_rows, write_csv, write_jsonl

TRAIN = sentiment_rows(40, seed=1)
VALIDATION = sentiment_rows(12, seed=2)


@pytest.fixture(autouse=True)
def isolated_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `datasets`' Arrow cache inside the test folder and forbid any hub access."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    # datasets reads the offline switches once at import, so the module attributes are patched too.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def formats() -> Registry[Any]:
    registry: Registry[Any] = Registry("data format")
    for name, loader in FORMATS.items():
        registry.register(name, loader, "core")
    return registry


def write(path: Path, rows: list[dict[str, Any]], fmt: str) -> str:
    """Write ``rows`` to ``path`` in format ``fmt``, each with its own writer (not nlpkit's)."""
    if fmt == "csv":
        write_csv(path, rows)
    elif fmt == "tsv":
        lines = ["\t".join(rows[0])] + ["\t".join(str(v) for v in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":  # a JSON array of objects
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "parquet":
        datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}).to_parquet(str(path))
    else:
        raise AssertionError(fmt)
    return str(path)


def section(**fields: Any) -> DataSection:
    return DataSection(**fields)


# -- load_splits -----------------------------------------------------------------------------------------------------


def test_every_registered_format_is_tested() -> None:
    assert set(FORMATS) == {"csv", "tsv", "json", "jsonl", "parquet", "text", "chat"}


# Formats of labelled rows; `text` holds one column of documents (tested on its own below), `chat` conversations
# (tests/unit/test_chat_data.py).
@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"text", "chat"}))
def test_load_splits_reads_each_format(fmt: str, formats: Registry[Any], tmp_path: Path) -> None:
    data = section(
        format=fmt,
        train=write(tmp_path / f"train.{fmt}", TRAIN, fmt),
        validation=write(tmp_path / f"dev.{fmt}", VALIDATION, fmt),
    )
    splits = load_splits(data, formats)
    assert set(splits) == {"train", "validation"}
    assert splits["train"].to_list() == TRAIN
    assert splits["validation"].to_list() == VALIDATION


def test_text_format_reads_documents_and_validation_split_carves_the_end(formats: Registry[Any], tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("First:\nOne line.\n\nSecond:\nTwo.\n\n\n\nThird:\nthree\nfour\n", encoding="utf-8")
    paragraphs = FORMATS["text"]({"train": str(path)})["train"]["text"]
    assert [t.strip() for t in paragraphs] == ["First:\nOne line.", "Second:\nTwo.", "Third:\nthree\nfour"]
    assert len(FORMATS["text"]({"train": str(path)}, documents="line")["train"]) == 7  # blank lines dropped
    assert len(FORMATS["text"]({"train": str(path)}, documents="file")["train"]) == 1
    splits = load_splits(section(format="text", train=str(path), validation_split=0.34), formats)
    assert splits["validation"]["text"] == paragraphs[-1:] and splits["train"]["text"] == paragraphs[:2]
    with pytest.raises(NlpkitError, match="documents: expected one of paragraph, line, file"):
        FORMATS["text"]({"train": str(path)}, documents="paragraphs")
    with pytest.raises(NlpkitError, match="leaves no validation rows"):
        load_splits(section(format="text", train=str(path), validation_split=0.01), formats)


def test_load_splits_reads_a_test_split(formats: Registry[Any], tmp_path: Path) -> None:
    test_rows = sentiment_rows(5, seed=3)
    data = section(
        format="csv",
        train=write(tmp_path / "train.csv", TRAIN, "csv"),
        validation=write(tmp_path / "dev.csv", VALIDATION, "csv"),
        test=write(tmp_path / "test.csv", test_rows, "csv"),
    )
    splits = load_splits(data, formats)
    assert set(splits) == {"train", "validation", "test"}
    assert splits["test"].to_list() == test_rows


def test_csv_keeps_quoted_commas_and_newlines(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{"text": 'she said "no, never"', "label": "neg"}, {"text": "two\nlines, one cell", "label": "pos"}]
    splits = load_splits(section(format="csv", train=write(tmp_path / "t.csv", rows, "csv")), formats)
    assert splits["train"].to_list() == rows


def test_tsv_reads_unbalanced_quotes_verbatim(formats: Registry[Any], tmp_path: Path) -> None:
    # GLUE-style TSV: quotes are ordinary characters, even unbalanced ones.
    sentences = ['he said "hi', "it's a \"quoted\" word", '"', 'no quotes here', "ends with a quote\"", "'single"]
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences)), encoding="utf-8")
    splits = load_splits(section(format="tsv", train=str(path)), formats)
    assert splits["train"]["sentence"] == sentences
    assert splits["train"]["label"] == [i % 2 for i in range(len(sentences))]


def test_unknown_format_lists_the_known_ones(formats: Registry[Any], tmp_path: Path) -> None:
    with pytest.raises(NlpkitError, match=r"unknown data format 'xlsx'.*csv.*parquet"):
        load_splits(section(format="xlsx", train=write(tmp_path / "t.csv", TRAIN, "csv")), formats)


def test_malformed_csv_names_the_file(formats: Registry[Any], tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text("text,label\ngood row,pos\nthis,row,has,too many fields\nlast,neg\n", encoding="utf-8")
    with pytest.raises(NlpkitError) as caught:
        load_splits(section(format="csv", train=str(path)), formats)
    message = str(caught.value)
    assert str(path) in message and "csv" in message
    assert "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    "fmt, content",
    [("jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n'), ("parquet", "not a parquet file"), ("json", "text,label\n")],
)
def test_unreadable_file_names_the_file(fmt: str, content: str, formats: Registry[Any], tmp_path: Path) -> None:
    path = tmp_path / f"bad.{fmt}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(NlpkitError, match=re.escape(str(path))):
        load_splits(section(format=fmt, train=str(path)), formats)


def test_missing_file_names_the_file(formats: Registry[Any], tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(NlpkitError, match=re.escape(str(path))):
        load_splits(section(format="csv", train=str(path)), formats)


def test_splits_may_have_different_extra_columns(formats: Registry[Any], tmp_path: Path) -> None:
    validation = [{"id": i, **row} for i, row in enumerate(VALIDATION)]
    data = section(
        format="csv",
        train=write(tmp_path / "train.csv", TRAIN, "csv"),
        validation=write(tmp_path / "dev.csv", validation, "csv"),
    )
    splits = select_columns(load_splits(data, formats), data, ["text", "label"])
    assert splits["train"].to_list() == TRAIN
    assert splits["validation"].to_list() == VALIDATION


# -- hub ----------------------------------------------------------------------------------------------------------------


def test_hub_offline_points_to_local_files(formats: Registry[Any]) -> None:
    with pytest.raises(NlpkitError) as caught:
        load_splits(section(hub="nlpkit-tests/no-such-dataset-3f9c1e"), formats)
    message = str(caught.value)
    assert "nlpkit-tests/no-such-dataset-3f9c1e" in message
    assert "local files" in message and "data.train" in message


def test_hub_split_names_map_to_train_and_validation(formats: Registry[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.DatasetDict(
        {
            "training": datasets.Dataset.from_list(TRAIN),
            "dev": datasets.Dataset.from_list(VALIDATION),
            "extra": datasets.Dataset.from_list(TRAIN[:2]),
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **options: calls.append((name, options)) or hub)
    data = section(hub="someone/sentiment", train="training", validation="dev", options={"revision": "v1"})
    splits = load_splits(data, formats)
    assert calls == [("someone/sentiment", {"revision": "v1"})]
    assert set(splits) == {"train", "validation"}  # no test split on the hub: none asked for
    assert splits["train"].to_list() == TRAIN
    assert splits["validation"].to_list() == VALIDATION


def test_hub_missing_split_lists_the_found_ones(formats: Registry[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN), "test": datasets.Dataset.from_list(TRAIN)})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **options: hub)
    with pytest.raises(NlpkitError, match=r"data\.validation.*'validation'.*found: train, test"):
        load_splits(section(hub="someone/sentiment"), formats)


# -- select_columns -----------------------------------------------------------------------------------------------------


def load_csv(tmp_path: Path, formats: Registry[Any], rows: list[dict[str, Any]], **fields: Any) -> tuple[Any, DataSection]:
    path = write(tmp_path / "train.csv", rows, "csv")
    data = section(format="csv", train=path, **fields)
    return load_splits(data, formats), data


def test_select_columns_renames_and_drops(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{"id": i, "sentence": r["text"], "sentiment": r["label"], "source": "web"} for i, r in enumerate(TRAIN)]
    splits, data = load_csv(tmp_path, formats, rows, columns={"text": "sentence", "label": "sentiment"})
    selected = select_columns(splits, data, ["text", "label"])
    assert sorted(selected["train"].column_names) == ["label", "text"]
    assert selected["train"]["text"] == [r["text"] for r in TRAIN]
    assert selected["train"]["label"] == [r["label"] for r in TRAIN]


def test_select_columns_applies_to_every_split(formats: Registry[Any], tmp_path: Path) -> None:
    data = section(
        format="jsonl",
        train=write(tmp_path / "train.jsonl", [{"review": r["text"], "label": r["label"]} for r in TRAIN], "jsonl"),
        validation=write(tmp_path / "dev.jsonl", [{"review": r["text"], "label": r["label"]} for r in VALIDATION], "jsonl"),
        columns={"text": "review"},
    )
    selected = select_columns(load_splits(data, formats), data, ["text", "label"])
    assert selected["train"].to_list() == TRAIN
    assert selected["validation"].to_list() == VALIDATION


def test_missing_column_names_file_column_and_found_columns(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{"sentence": r["text"], "label": r["label"]} for r in TRAIN]
    splits, data = load_csv(tmp_path, formats, rows)
    with pytest.raises(NlpkitError) as caught:
        select_columns(splits, data, ["text", "label"])
    message = str(caught.value)
    assert data.train in message
    assert "'text'" in message
    assert "found: sentence, label" in message
    assert "data.columns.text" in message  # tells the user how to map it


def test_missing_mapped_column_names_the_mapped_column(formats: Registry[Any], tmp_path: Path) -> None:
    splits, data = load_csv(tmp_path, formats, TRAIN, columns={"label": "stars"})
    with pytest.raises(NlpkitError) as caught:
        select_columns(splits, data, ["text", "label"])
    message = str(caught.value)
    assert data.train in message and "'stars'" in message and "found: text, label" in message


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_required_cell_names_file_and_row(empty: str, formats: Registry[Any], tmp_path: Path) -> None:
    rows = [dict(r) for r in TRAIN]
    rows[6]["text"] = empty  # the 7th data row (the header is not counted)
    splits, data = load_csv(tmp_path, formats, rows)
    with pytest.raises(NlpkitError) as caught:
        select_columns(splits, data, ["text", "label"])
    message = str(caught.value)
    assert data.train in message
    assert "row 7" in message and "row 70" not in message
    assert "'text'" in message


def test_empty_cell_reports_the_file_column_name(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{"review": r["text"], "label": r["label"]} for r in TRAIN]
    rows[0]["review"] = ""
    splits, data = load_csv(tmp_path, formats, rows, columns={"text": "review"})
    with pytest.raises(NlpkitError, match=r"row 1: empty 'review'"):
        select_columns(splits, data, ["text", "label"])


def test_empty_numeric_cell_is_reported(formats: Registry[Any], tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_text("text,score\na,1.5\nb,2.0\nc,\nd,0.5\n", encoding="utf-8")
    data = section(format="csv", train=str(path))
    with pytest.raises(NlpkitError, match=r"row 3: empty 'score'"):
        select_columns(load_splits(data, formats), data, ["text", "score"])


def test_nan_cell_is_reported(formats: Registry[Any], tmp_path: Path) -> None:
    path = tmp_path / "scores.parquet"
    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "score": [1.0, 2.0, float("nan")]}).to_parquet(str(path))
    data = section(format="parquet", train=str(path))
    with pytest.raises(NlpkitError, match=r"row 3: empty 'score'"):
        select_columns(load_splits(data, formats), data, ["text", "score"])


def test_empty_cell_in_a_dropped_column_is_fine(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{**r, "note": ""} for r in TRAIN]
    splits, data = load_csv(tmp_path, formats, rows)
    assert select_columns(splits, data, ["text", "label"])["train"].to_list() == TRAIN


def test_optional_field_kept_when_present(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{"text": r["premise"], "text_pair": r["hypothesis"], "label": r["relation"], "x": 1} for r in pair_rows(20, 4)]
    splits, data = load_csv(tmp_path, formats, rows)
    selected = select_columns(splits, data, ["text", "label"], optional=["text_pair"])
    assert sorted(selected["train"].column_names) == ["label", "text", "text_pair"]
    assert selected["train"]["text_pair"] == [r["text_pair"] for r in rows]


def test_optional_field_kept_when_mapped(formats: Registry[Any], tmp_path: Path) -> None:
    rows = [{"premise": r["premise"], "hypothesis": r["hypothesis"], "relation": r["relation"]} for r in pair_rows(20, 4)]
    columns = {"text": "premise", "text_pair": "hypothesis", "label": "relation"}
    splits, data = load_csv(tmp_path, formats, rows, columns=columns)
    selected = select_columns(splits, data, ["text", "label"], optional=["text_pair"])
    assert selected["train"]["text_pair"] == [r["hypothesis"] for r in rows]
    assert selected["train"]["text"] == [r["premise"] for r in rows]


def test_optional_field_not_required_when_absent(formats: Registry[Any], tmp_path: Path) -> None:
    splits, data = load_csv(tmp_path, formats, TRAIN)
    selected = select_columns(splits, data, ["text", "label"], optional=["text_pair"])
    assert selected["train"].to_list() == TRAIN


def test_optional_field_named_in_columns_is_required(formats: Registry[Any], tmp_path: Path) -> None:
    splits, data = load_csv(tmp_path, formats, TRAIN, columns={"text_pair": "sentence2"})
    with pytest.raises(NlpkitError, match=r"missing column 'sentence2'.*found: text, label"):
        select_columns(splits, data, ["text", "label"], optional=["text_pair"])


# -- LengthGroupedSampler -----------------------------------------------------------------------------------------


def random_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def mean_spread(order: list[int], lengths: list[int], batch_size: int) -> float:
    """Mean over consecutive batches of (longest - shortest): the padding a batch wastes."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return statistics.mean(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches)


@pytest.mark.parametrize("n, batch_size, chunk_batches", [(960, 32, 50), (640, 16, 5), (1000, 8, 50), (7, 4, 50)])
def test_sampler_yields_a_permutation(n: int, batch_size: int, chunk_batches: int) -> None:
    sampler = LengthGroupedSampler(random_lengths(n), batch_size, seed=3, chunk_batches=chunk_batches)
    assert len(sampler) == n
    order = list(sampler)
    assert sorted(order) == list(range(n))
    sampler.set_epoch(5)
    assert sorted(sampler) == list(range(n))


@pytest.mark.parametrize("n, batch_size, chunk_batches", [(960, 32, 50), (1280, 16, 10)])
def test_sampler_batches_have_similar_lengths(n: int, batch_size: int, chunk_batches: int) -> None:
    lengths = random_lengths(n)
    shuffled = list(range(n))
    random.Random(1).shuffle(shuffled)
    baseline = mean_spread(shuffled, lengths, batch_size)
    for epoch in range(3):
        sampler = LengthGroupedSampler(lengths, batch_size, seed=0, chunk_batches=chunk_batches)
        sampler.set_epoch(epoch)
        assert mean_spread(list(sampler), lengths, batch_size) < baseline / 4


def test_sampler_batch_order_is_random() -> None:
    # Grouped, but not simply sorted: long batches must not always come first.
    lengths = random_lengths(960)
    order = list(LengthGroupedSampler(lengths, 32, seed=0))
    batch_means = [statistics.mean(lengths[j] for j in order[i : i + 32]) for i in range(0, 960, 32)]
    assert batch_means != sorted(batch_means) and batch_means != sorted(batch_means, reverse=True)


def test_sampler_groups_dataloader_batches_when_size_is_not_a_multiple() -> None:
    n, batch_size = 1000, 32  # 31 full batches and one of 8
    lengths = random_lengths(n)
    ideal = mean_spread(sorted(range(n), key=lambda j: lengths[j]), lengths, batch_size)
    for epoch in range(4):
        sampler = LengthGroupedSampler(lengths, batch_size, seed=0)
        sampler.set_epoch(epoch)
        loader = DataLoader(range(n), batch_size=batch_size, sampler=sampler)
        order = [j for batch in loader for j in batch.tolist()]
        assert mean_spread(order, lengths, batch_size) <= 2 * ideal, f"epoch {epoch}"


def test_sampler_epochs_and_seeds() -> None:
    lengths = random_lengths(500)
    sampler = LengthGroupedSampler(lengths, 16, seed=7)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    again = LengthGroupedSampler(lengths, 16, seed=7)
    again.set_epoch(1)
    assert list(again) == second
    other_seed = LengthGroupedSampler(lengths, 16, seed=8)
    other_seed.set_epoch(1)
    assert list(other_seed) != second


# -- token-budget batches ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [64, 500, 4096])
def test_token_budget_batches_cover_every_example_once_within_the_budget(max_tokens: int) -> None:
    lengths = random_lengths(1000)
    batches = token_budget_batches(lengths, max_tokens, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= max_tokens or len(batch) == 1  # an example over budget goes alone
    # Greedy: a batch could not have taken the next example without going over.
    for batch, following in zip(batches, batches[1:]):
        assert (len(batch) + 1) * max(lengths[i] for i in [*batch, following[0]]) > max_tokens


def test_token_budget_batches_pack_short_examples_many_to_a_batch() -> None:
    lengths = [5] * 100 + [100] * 10
    batches = token_budget_batches(lengths, 400, seed=0)
    # 400 tokens: 80 sentences of 5 a batch, 4 of 100; the 20 short ones left over share no batch with long ones.
    assert [(len(b), max(lengths[i] for i in b)) for b in batches] == [(80, 5), (20, 5), (4, 100), (4, 100), (2, 100)]


def test_token_budget_batches_depend_on_the_seed_only_among_equal_lengths() -> None:
    lengths = [3, 1, 2, 3, 1, 2] * 50
    first, again, other = (token_budget_batches(lengths, 30, seed=s) for s in (0, 0, 1))
    assert first == again and first != other
    assert [sorted(lengths[i] for i in b) for b in first] == [sorted(lengths[i] for i in b) for b in other]


def test_batched_features_serve_a_batch_per_item_through_a_dataloader() -> None:
    features = [{"x": i} for i in range(10)]
    batches = [[0, 1, 2], [3], [4, 5, 6, 7, 8, 9]]
    loader = DataLoader(BatchedFeatures(features, batches), batch_size=None, collate_fn=lambda fs: [f["x"] for f in fs])
    assert list(loader) == [[0, 1, 2], [3], [4, 5, 6, 7, 8, 9]]

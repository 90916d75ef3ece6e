"""nlpkit.testing, the kit plugin authors test with: tiny parts, and a check that names what is broken.

Each broken task below is the classification task with one defect. This module
is itself their plugin (``nlpkit_register_tasks`` at the bottom), the way a
plugin author's module is; the unbroken classification task passes the same
check in ``tests/plugins/test_classification_conformance.py``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
import torchmetrics
import torchmetrics.classification as tmc

import nlpkit
from nlpkit import NlpkitError
from nlpkit.backbones import PRESETS
from nlpkit.plugins import load_plugins
from nlpkit.recipe import load_recipe
from nlpkit.testing import (
    TINY_BACKBONE,
    ConformanceError,
    check_task,
    tiny_backbone,
    tiny_backbone_config,
    tiny_classification_data,
    tiny_classification_rows,
    tiny_recipe,
    tiny_tokenizer,
    write_rows,
)
from nlpkit_classification import Classification, ClassificationOptions

KINDS = ["encoder", "decoder", "encoder-decoder"]


# -- tiny parts ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_backbone_config_is_the_registered_preset_shrunk(kind):
    preset = PRESETS[f"{kind}-tiny"]()
    config = tiny_backbone_config(kind, vocab_size=100)

    assert (config.kind, config.vocab_size, config.num_layers, config.hidden_size) == (kind, 100, 1, 32)
    # The family stays the preset's: only the size changes.
    for name in ("norm", "norm_position", "position_embedding", "activation", "gated_mlp", "tie_word_embeddings"):
        assert getattr(config, name) == getattr(preset, name), name


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_backbone_is_small_reproducible_and_runs(kind):
    rng_before = torch.random.get_rng_state()
    backbone = tiny_backbone(kind, vocab_size=50)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's random state is untouched

    assert sum(p.numel() for p in backbone.parameters()) < 50_000
    again = tiny_backbone(kind, vocab_size=50)
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), again.state_dict().values()))
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    if kind == "encoder-decoder":
        out = backbone(ids, attention_mask=mask, decoder_input_ids=ids[:, :5])
        assert out.last_hidden_state.shape == (2, 5, 32)
    else:
        out = backbone(ids, attention_mask=mask)
        assert out.last_hidden_state.shape == (2, 7, 32)
    # No dropout: training mode gives the same output twice.
    repeat = backbone(ids, attention_mask=mask, **({"decoder_input_ids": ids[:, :5]} if kind == "encoder-decoder" else {}))
    assert torch.equal(out.last_hidden_state, repeat.last_hidden_state)


def test_tiny_backbone_of_an_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no tiny preset for backbone kind 'encodr'; known: decoder, encoder, encoder-decoder"):
        tiny_backbone_config("encodr")


def test_tiny_tokenizer_is_small_complete_and_deterministic():
    tokenizer = tiny_tokenizer()
    assert tokenizer.vocab_size <= 400
    assert tokenizer.token_id("pad") is not None and tokenizer.token_id("cls") is not None
    (encoding,) = tokenizer.encode_batch(["a good film"])
    assert encoding.ids[0] == tokenizer.token_id("cls") and encoding.ids[-1] == tokenizer.token_id("sep")
    assert tiny_tokenizer().backend.get_vocab() == tokenizer.backend.get_vocab()
    (long,) = tiny_tokenizer(["word " * 10], max_length=8).encode_batch(["word " * 50])
    assert len(long.ids) == 8


def test_write_rows_writes_csv_tsv_and_json_lines(tmp_path):
    rows = [{"text": "a good film", "value": 2}, {"text": 'said "fine", then left', "value": 1.5}]
    with write_rows(tmp_path / "rows.csv", rows).open(newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"text": "a good film", "value": "2"}, {"text": 'said "fine", then left', "value": "1.5"}]
    with write_rows(tmp_path / "rows.tsv", rows).open(newline="") as handle:
        assert list(csv.DictReader(handle, delimiter="\t"))[1]["text"] == 'said "fine", then left'
    lines = write_rows(tmp_path / "rows.jsonl", [{"text": "x", "label": ["pos", "neg"]}]).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"text": "x", "label": ["pos", "neg"]}]

    with pytest.raises(ValueError, match=r"row 1: 'label' holds a list; .csv cells hold text and numbers only"):
        write_rows(tmp_path / "bad.csv", [{"text": "x", "label": ["pos"]}])
    with pytest.raises(ValueError, match=r"cannot tell the format of 'rows.txt'"):
        write_rows(tmp_path / "rows.txt", rows)


@pytest.mark.parametrize("shape", [{}, {"pairs": True}, {"multi_label": True}])
def test_tiny_classification_rows_hold_every_label(shape):
    rows = tiny_classification_rows(8, **shape)
    assert len(rows) == 8
    if shape.get("pairs"):
        assert {r["label"] for r in rows} == {"same", "different"} and all(r["text_pair"] for r in rows)
    elif shape.get("multi_label"):
        assert {tuple(r["label"]) for r in rows} == {("pos",), ("neg",), ("neg", "pos")}
    else:
        assert {r["label"] for r in rows} == {"pos", "neg"}
    assert tiny_classification_rows(8, **shape) == rows  # same seed, same rows


def test_tiny_classification_data_is_a_valid_recipe_data_section(tmp_path):
    files = tiny_classification_data(tmp_path / "data", multi_label=True, sizes=(12, 6, 6))
    assert set(files) == {"train", "validation", "test"}
    with open(files["train"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {r["label"] for r in rows} == {"pos", "neg", "neg,pos"}

    registries = load_plugins(autoload=False).registries
    recipe = load_recipe(tiny_recipe("classification", files, tmp_path / "runs", options={"multi_label": True}),
                         registries=registries)
    assert recipe.data.format == "csv" and recipe.task_options.multi_label
    assert recipe.training.max_steps == 2 and recipe.trainer["accelerator"] == "cpu"
    assert recipe.backbone.preset == "encoder-tiny" and recipe.backbone.config == TINY_BACKBONE


# -- the conformance check names the broken part ------------------------------------


class VectorLoss(Classification):
    name = "vector-loss"

    def loss(self, logits, batch):
        return F.cross_entropy(logits, batch["labels"], reduction="none")  # forgot to reduce


class MissingMetric(Classification):
    name = "missing-metric"

    def metrics(self):
        return {"accuracy": tmc.MulticlassAccuracy(len(self.labels))}  # metric_names also promises macro_f1


class ShortDecode(Classification):
    name = "short-decode"

    def decode(self, logits, batch):
        return super().decode(logits, batch)[:1]


class DetachedBackbone(Classification):
    name = "detached-backbone"

    def forward(self, model, batch):
        hidden = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return model.head(hidden[:, 0].detach())


class KindTypo(Classification):
    name = "kind-typo"
    backbone_kinds = ("encodr",)


class KindsWithoutComma(Classification):
    name = "kinds-without-comma"
    backbone_kinds = ("encoder")


class SetState(Classification):
    name = "set-state"

    def state(self):
        return {"labels": set(self.labels)}


class TensorAnswers(Classification):
    name = "tensor-answers"

    def decode(self, logits, batch):
        return [{"scores": row} for row in logits.softmax(-1)]


class EncodeNeedsLabels(Classification):
    name = "encode-needs-labels"

    def encode(self, examples):
        examples["label"]  # prediction has no label column: this raises KeyError there
        return super().encode(examples)


class IgnoresPadding(Classification):
    name = "ignores-padding"

    def forward(self, model, batch):
        hidden = model.backbone(batch["input_ids"]).last_hidden_state  # no attention mask: pads are attended to
        return model.head(hidden.mean(1))


class PoolsPadding(Classification):
    """Passes the mask to the backbone, then averages every position, the padding's included."""

    name = "pools-padding"

    def forward(self, model, batch):
        hidden = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return model.head(hidden.mean(1))


class AccuracyAndErrorRate(torchmetrics.Metric):
    """One metric that computes two numbers, as torchmetrics' SQuAD computes exact_match and f1."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("right", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits, labels):
        self.right += (logits.argmax(-1) == labels).sum()
        self.total += labels.numel()

    def compute(self):
        accuracy = self.right.float() / self.total
        return {"accuracy": accuracy, "error_rate": 1 - accuracy}


class DictMetric(Classification):
    name = "dict-metric"
    metric_names = ("accuracy", "error_rate")
    lower_is_better = ("error_rate",)

    def metrics(self):
        return {"both": AccuracyAndErrorRate()}


@dataclass
class WindowOptions(ClassificationOptions):
    stride: int = 8


class TokenizerBoundOption(Classification):
    """An option only the tokenizer can judge: a stride must stay below tokenizer.max_length."""

    name = "tokenizer-bound"
    config_class = WindowOptions

    def check_options(self):
        if self.config.stride >= self.tokenizer.max_length:
            raise NlpkitError(f"stride: {self.config.stride} is not below tokenizer.max_length "
                              f"({self.tokenizer.max_length})")


class EchoesText(Classification):
    """Keeps the raw text beside the tensors, through collate to decode."""

    name = "echoes-text"

    def encode(self, examples):
        return {**super().encode(examples), "text": list(examples["text"])}

    def collate(self, features):
        return {**super().collate(features), "text": [f["text"] for f in features]}

    def decode(self, logits, batch):
        return [{**answer, "text": text} for answer, text in zip(super().decode(logits, batch), batch["text"])]


@dataclass
class SetOptions:
    stopwords: set[str] = field(default_factory=set)  # a recipe holds lists, never sets


class SetOptionsTask(Classification):
    name = "set-options"
    config_class = SetOptions


class NeverRegistered(Classification):
    name = "never-registered"


BROKEN = [VectorLoss, MissingMetric, ShortDecode, DetachedBackbone, KindTypo, KindsWithoutComma, SetState,
          TensorAnswers, EncodeNeedsLabels, IgnoresPadding, PoolsPadding, SetOptionsTask, DictMetric,
          TokenizerBoundOption, EchoesText]


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return BROKEN


def _check(task_cls, tmp_path, **kwargs):
    return check_task(task_cls, tiny_classification_rows(16, seed=0), tiny_classification_rows(8, seed=1),
                      tmp_path=tmp_path, **kwargs)


# (task, the part named, words the message must hold): from the first part checked to the last.
FAILURES = [
    (KindsWithoutComma, "KindsWithoutComma.backbone_kinds", ["expected a tuple of names", "trailing comma"]),
    (KindTypo, "KindTypo.backbone_kinds", ["unknown backbone kind 'encodr'; known: decoder, encoder, encoder-decoder"]),
    (SetOptionsTask, "SetOptionsTask.config_class", ["unsupported recipe field type", "stopwords"]),
    (SetState, "SetState.state", ["expected JSON-serialisable data"]),
    (VectorLoss, "VectorLoss.loss", ["expected a finite scalar tensor, got shape (4,)"]),
    (DetachedBackbone, "DetachedBackbone.forward", ["no gradient reaches the backbone"]),
    (MissingMetric, "MissingMetric.metrics", ["missing 'macro_f1' (metric_names: accuracy, macro_f1); "
                                              "the metrics compute: accuracy"]),
    (ShortDecode, "ShortDecode.decode", ["expected a list of 4 answers (one per example), got 1"]),
    (TensorAnswers, "TensorAnswers.decode", ["answer 1 is not JSON-serialisable", "Tensor"]),
    (EncodeNeedsLabels, "EncodeNeedsLabels.encode", ["raised KeyError: 'label'", "during predict(a list of 4 inputs)"]),
    (IgnoresPadding, "IgnoresPadding: predict", ["alone is answered", "padding must not change answers"]),
    (PoolsPadding, "PoolsPadding: predict", ["alone is answered", "in a padded batch", "pass the attention mask"]),
]


@pytest.mark.parametrize("task_cls, part, words", FAILURES, ids=[case[0].__name__ for case in FAILURES])
def test_a_broken_task_fails_naming_the_part(task_cls, part, words, tmp_path):
    with pytest.raises(ConformanceError) as caught:
        _check(task_cls, tmp_path)

    error = caught.value
    assert isinstance(error, AssertionError)  # pytest reports it as a failed assertion
    assert error.part == part
    message = str(error)
    assert message.startswith(f"{part}: "), message
    for word in words:
        assert word in message, message


def test_a_metric_that_computes_a_dict_is_spread_over_metric_names(tmp_path):
    result = _check(DictMetric, tmp_path)
    assert {"val_accuracy", "val_error_rate"} <= set(result.metrics)
    assert result.metrics["val_accuracy"] + result.metrics["val_error_rate"] == pytest.approx(1.0)
    # A recipe may monitor either, the error rate at its lowest.
    recipe = load_recipe(tiny_recipe("dict-metric", {"train": "x.csv", "validation": "x.csv"}, tmp_path), [
        "training.monitor=val_error_rate"], load_plugins(plugins=[__name__]).registries, check_files=False)
    assert recipe.training.monitor_mode == "min"


def test_plain_values_in_a_batch_reach_decode(tmp_path):
    result = _check(EchoesText, tmp_path)
    rows = tiny_classification_rows(8, seed=1)
    assert [answer["text"] for answer in result.answers] == [row["text"] for row in rows[: len(result.answers)]]


def test_an_option_that_depends_on_the_tokenizer_fails_nlpkit_check(tmp_path, capsys):
    data = tiny_classification_data(tmp_path / "data")
    recipe = tiny_recipe("tokenizer-bound", data, tmp_path / "runs", options={"stride": 64})
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    from nlpkit.cli import main

    assert main(["check", "--plugin", __name__, str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"nlpkit: error: {path}: tokenizer-bound.stride: 64 is not below tokenizer.max_length (32)"]
    assert main(["check", "--plugin", __name__, str(path), "tokenizer-bound.stride=8"]) == 0


def test_an_unregistered_task_is_reported_with_the_hook_to_write(tmp_path):
    with pytest.raises(ConformanceError) as caught:
        _check(NeverRegistered, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"NeverRegistered: plugin '{__name__}': registers no task 'never-registered'"), message
    assert "@nlpkit.hookimpl nlpkit_register_tasks() returning [NeverRegistered]" in message
    assert "vector-loss" in message  # what the plugin does register


def test_options_the_recipe_refuses_are_reported_as_the_config_class(tmp_path):
    with pytest.raises(ConformanceError, match=r"^Classification\.config_class: .*classification\.pooling: expected one of 'cls', 'mean', got 'max'"):
        _check(Classification, tmp_path, options={"pooling": "max"})


def test_rows_without_the_task_fields_are_a_usage_error(tmp_path):
    rows = [{"sentence": "a good film", "label": "pos"}] * 4
    with pytest.raises(ValueError, match=r"train_rows\[0\] has no 'text' \(rows are keyed by the task's fields: text, label\)"):
        check_task(Classification, rows, rows, tmp_path=tmp_path)

"""The classification plugin end to end: single sentences, sentence pairs, multi-label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nlpkit
from nlpkit import runs
from tests.helpers import multilabel_rows, pair_rows, tiny_recipe, write_csv, write_jsonl


def test_single_label_run_learns_and_predicts(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe)

    assert isinstance(result.run_dir, Path) and result.run_dir.is_dir()
    assert {"val_accuracy", "val_macro_f1", "val_loss", "test_accuracy", "test_macro_f1", "test_loss"} <= set(result.metrics)
    assert all(isinstance(v, float) for v in result.metrics.values())
    # Sentiment words decide the label: far above the 0.5 of chance after a few epochs.
    assert result.metrics["val_accuracy"] >= 0.9

    model = nlpkit.load(result.run_dir)
    one = model.predict("a great lovely film")
    assert one["label"] == "pos"
    assert set(one["scores"]) == {"neg", "pos"}
    assert one["score"] == max(one["scores"].values())
    assert sum(one["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    many = model.predict(["a dreadful grim story", "the happy kind actor"])
    assert [answer["label"] for answer in many] == ["neg", "pos"]
    # Batched by length (longest last here), answered in the order given: each as it is answered alone.
    texts = ["a dreadful grim story that was awful and grim and sad", "good", "the happy kind actor", "grim"]
    batched = model.predict(texts, batch_size=2)
    for text, answer in zip(texts, batched):
        alone = model.predict(text)
        assert answer["label"] == alone["label"] and answer["score"] == pytest.approx(alone["score"], abs=1e-5)


def test_run_folder_holds_everything_needed(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe)
    folder = result.run_dir
    for name in ("run.json", "recipe.yaml", "backbone.json", "task_state.json", "tokenizer.json",
                 "tokenizer_config.json", "model.safetensors", "metrics.csv", "metrics.json"):
        assert (folder / name).is_file(), name
    info = json.loads((folder / "run.json").read_text())
    assert info["format_version"] == runs.FORMAT_VERSION
    assert info["versions"]["torch"] and info["versions"]["pytorch-lightning"]
    assert json.loads((folder / "metrics.json").read_text()) == pytest.approx(result.metrics)
    history = (folder / "metrics.csv").read_text().splitlines()
    assert "val_accuracy" in history[0] and len(history) > 3
    assert json.loads((folder / "task_state.json").read_text()) == {"labels": ["neg", "pos"]}

    # A second run never reuses the first one's folder.
    again = nlpkit.run(sentiment_recipe, overrides=["training.epochs=1"])
    assert again.run_dir != folder and (folder / "model.safetensors").is_file()


def test_reported_metrics_are_those_of_the_best_checkpoint(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, overrides=["training.monitor=val_accuracy"])
    model = nlpkit.load(result.run_dir)
    evaluated = model.evaluate(sentiment_recipe["data"]["validation"])
    assert evaluated["accuracy"] == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-4)


def test_sentence_pair_classification(tmp_path):
    data = {
        "train": str(write_csv(tmp_path / "train.csv", pair_rows(320, 1))),
        "validation": str(write_csv(tmp_path / "dev.csv", pair_rows(80, 2))),
        "columns": {"text": "premise", "text_pair": "hypothesis", "label": "relation"},
    }
    result = nlpkit.run(tiny_recipe(tmp_path, data=data, training={"epochs": 2}))
    assert {"val_accuracy", "val_macro_f1"} <= set(result.metrics)

    model = nlpkit.load(result.run_dir)
    features = model.features({"text": ["good film"], "text_pair": ["bad film"]})[0]
    # Both sentences reach the model, the second one marked by token type 1.
    assert 0 in features["token_type_ids"] and 1 in features["token_type_ids"]
    answers = model.predict([{"text": "a good film", "text_pair": "a bad film"}, {"text": "good", "text_pair": "great"}])
    assert [set(a) for a in answers] == [{"label", "score", "scores"}] * 2
    assert {a["label"] for a in answers} <= {"same", "different"}
    # The pair matters: swapping in another second sentence changes the scores.
    alone = model.predict({"text": "a good film", "text_pair": "a great film"})
    assert alone["scores"] != answers[0]["scores"]


def test_multi_label_classification_from_jsonl(tmp_path):
    data = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", multilabel_rows(320, 1))),
        "validation": str(write_jsonl(tmp_path / "dev.jsonl", multilabel_rows(80, 2))),
        "columns": {"label": "tags"},
    }
    recipe = tiny_recipe(tmp_path, data=data, classification={"multi_label": True, "threshold": 0.4}, training={"epochs": 4})
    result = nlpkit.run(recipe)
    assert result.metrics["val_accuracy"] >= 0.8

    model = nlpkit.load(result.run_dir)
    answers = model.predict(["good great lovely the film", "the a day", "awful grim good lovely the book"])
    for answer in answers:
        assert set(answer) == {"labels", "score", "scores"}
        assert set(answer["scores"]) == {"neg", "pos"}
        assert answer["labels"] == [k for k, p in answer["scores"].items() if p >= 0.4]
    assert answers[0]["labels"] == ["pos"]
    assert answers[2]["labels"] == ["neg", "pos"]


def test_multi_label_from_csv_with_separator(tmp_path):
    rows = [{"text": r["text"], "tags": "|".join(r["tags"]) or "none"} for r in multilabel_rows(120, 3)]
    data = {
        "train": str(write_csv(tmp_path / "train.csv", rows)),
        "validation": str(write_csv(tmp_path / "dev.csv", rows[:30])),
        "columns": {"label": "tags"},
    }
    recipe = tiny_recipe(tmp_path, data=data, classification={"multi_label": True, "label_separator": "|"}, training={"epochs": 1})
    result = nlpkit.run(recipe)
    assert json.loads((result.run_dir / "task_state.json").read_text()) == {"labels": ["neg", "none", "pos"]}


def test_run_folders_from_before_the_head_had_names_still_load_and_resume(sentiment_recipe, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    result = nlpkit.run(sentiment_recipe, ["training.epochs=1"])
    texts = ["a great lovely film", "a dreadful grim story", "the plot"]
    expected = nlpkit.load(result.run_dir).predict(texts)
    old = tmp_path / "old-run"
    shutil.copytree(result.run_dir, old)
    # What an nlpkit of before wrote: the head an nn.Sequential, its layers named by index.
    renames = {"head.dense.": "head.0.", "head.out.": "head.3."}

    def to_old(name: str, prefix: str = "") -> str:
        for new, before in renames.items():
            if name.startswith(prefix + new):
                return prefix + before + name[len(prefix + new):]
        return name

    weights = load_file(old / "model.safetensors")
    assert {"head.dense.weight", "head.out.bias"} <= set(weights)  # the names this nlpkit writes
    save_file({to_old(name): tensor for name, tensor in weights.items()}, old / "model.safetensors")
    for checkpoint_file in (old / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(checkpoint_file, weights_only=True)
        checkpoint["state_dict"] = {to_old(k, "model."): v for k, v in checkpoint["state_dict"].items()}
        torch.save(checkpoint, checkpoint_file)

    assert nlpkit.load(old).predict(texts) == expected
    resumed = nlpkit.run(sentiment_recipe, ["training.epochs=2"], resume=old)  # the checkpoints load too
    assert resumed.metrics["val_accuracy"] >= 0.5

"""Recipe loading and validation: every user error is one line naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nlpkit import NlpkitError
from nlpkit.recipe import apply_overrides, load_recipe, recipe_to_dict


def write_recipe(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def error_of(recipe, overrides=()) -> str:
    with pytest.raises(NlpkitError) as info:
        load_recipe(recipe, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_recipe_resolves_paths_and_defaults(sentiment_recipe, tmp_path):
    path = write_recipe(tmp_path, sentiment_recipe)
    recipe = load_recipe(path)
    assert recipe.task == "classification"
    assert Path(recipe.data.train).is_absolute()
    assert recipe.data.format == "csv"  # from the extension
    assert recipe.training.monitor_mode == "min"  # val_loss is minimised
    assert recipe.name == "recipe"
    assert recipe.task_options.multi_label is False
    # The resolved dump validates again to the same recipe.
    again = load_recipe(recipe_to_dict(recipe))
    assert recipe_to_dict(again) == recipe_to_dict(recipe)


def test_recipe_dir_variable_resolves_against_the_recipe_folder(sentiment_recipe, tmp_path):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "train.csv").write_text(Path(sentiment_recipe["data"]["train"]).read_text())
    sentiment_recipe["data"]["train"] = "${recipe_dir}/train.csv"
    recipe = load_recipe(write_recipe(sub, sentiment_recipe))
    assert recipe.data.train == str((sub / "train.csv").resolve())


def test_relative_paths_resolve_against_the_current_directory(sentiment_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentiment_recipe["data"]["train"] = "train.csv"
    recipe = load_recipe(sentiment_recipe)
    assert recipe.data.train == str(tmp_path / "train.csv")


def test_overrides_change_fields_and_parse_yaml_scalars(sentiment_recipe):
    recipe = load_recipe(sentiment_recipe, ["training.batch_size=7", "optimization.lr=1e-4",
                                            "classification.multi_label=true", "training.early_stopping.patience=2"])
    assert recipe.training.batch_size == 7
    assert recipe.optimization.lr == pytest.approx(1e-4)
    assert recipe.task_options.multi_label is True
    assert recipe.training.early_stopping.patience == 2


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["task=clasification"], ["task", "unknown task 'clasification'", "known: classification", "did you mean 'classification'"]),
        (["backbone.preset=encoder-tny"], ["backbone.preset", "unknown preset 'encoder-tny'", "did you mean 'encoder-tiny'"]),
        (["training.bacth_size=8"], ["training.bacth_size", "unknown key", "did you mean 'batch_size'"]),
        (["traning.epochs=1"], ["traning", "unknown key", "did you mean 'training'"]),
        (["training.batch_size=abc"], ["training.batch_size", "expected an integer", "'abc'"]),
        (["training.batch_size=0"], ["training.batch_size", ">= 1"]),
        (["training.precision=bf16"], ["training.precision", "bf16-mixed"]),
        (["training.max_tokens=0"], ["training.max_tokens", ">= 1"]),
        (["training.max_tokens=4096", "data.group_by_length=true"], ["training.max_tokens", "drop data.group_by_length"]),
        (["training.monitor=val_acc"], ["training.monitor", "did you mean 'val_accuracy'"]),
        (["optimization.schedule=cosin"], ["optimization.schedule", "did you mean 'cosine'"]),
        (["classification.pooling=max"], ["classification.pooling", "'cls', 'mean'"]),
        (["classification.treshold=0.3"], ["classification.treshold", "did you mean 'threshold'"]),
        (["data.columns.txt=sentence"], ["data.columns.txt", "unknown field", "did you mean 'text'"]),
        (["data.format=xml"], ["data.format", "unknown data format 'xml'", "known: ", "csv, "]),
        (["backbone.config.hiden_size=64"], ["backbone.config.hiden_size", "did you mean 'hidden_size'"]),
        (["backbone.config.hidden_size=101"], ["backbone.config", "hidden_size"]),
        (["backbone.config.dropout=1.5"], ["backbone.config.dropout: must be in [0, 1), got 1.5"]),
        (["trainer.max_epochs=3"], ["trainer.max_epochs", "training.epochs"]),
        (["trainer.acelerator=cpu"], ["trainer.acelerator", "did you mean 'accelerator'"]),
    ],
)
def test_errors_name_the_override_key_and_expectation(sentiment_recipe, overrides, expected):
    message = error_of(sentiment_recipe, overrides)
    assert message.startswith(f"override '{overrides[0]}'")
    for part in expected:
        assert part in message, message


def test_errors_in_a_file_name_the_file(sentiment_recipe, tmp_path):
    sentiment_recipe["training"]["epochs"] = "many"
    path = write_recipe(tmp_path, sentiment_recipe)
    message = error_of(path)
    assert message.startswith(f"{path}: training.epochs: expected an integer")


def test_missing_data_file(sentiment_recipe):
    message = error_of(sentiment_recipe, ["data.validation=missing.csv"])
    assert "data.validation" in message and "missing.csv" in message and "does not exist" in message


def test_missing_sections_and_keys(sentiment_recipe):
    del sentiment_recipe["backbone"]
    assert "backbone: missing required key" in error_of(sentiment_recipe)
    assert "task: missing required key" in error_of({"backbone": {"preset": "encoder-tiny"}})


def test_task_needs_a_compatible_backbone_kind(sentiment_recipe):
    message = error_of(sentiment_recipe, ["backbone.preset=decoder-tiny"])
    assert "classification" in message and "encoder" in message and "decoder" in message


def test_tokenizer_length_must_fit_the_backbone(sentiment_recipe):
    from nlpkit.plugins import load_plugins
    from nlpkit.tokenization import Tokenizer
    from nlpkit.assembly import build_backbone_config

    plugin_set = load_plugins()
    recipe = load_recipe(sentiment_recipe, ["tokenizer.max_length=4096"], plugin_set.registries)
    tokenizer = Tokenizer.train(["a b c d"] * 10, "wordpiece", 50, 1, True, 4096)
    with pytest.raises(NlpkitError, match="tokenizer.max_length.*max_positions"):
        build_backbone_config(recipe, plugin_set.registries, tokenizer)


def test_python_yaml_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text('task: !!python/object/apply:os.system ["touch pwned"]\n', encoding="utf-8")
    message = error_of(path)
    assert message.startswith(f"{path}: line 1:") and "python" in message
    assert not (tmp_path / "pwned").exists()


def test_recipe_file_that_does_not_exist(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"recipe file '{tmp_path / 'nope.yaml'}' does not exist"


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: classification\nbackbone: {preset: encoder-tiny\n", encoding="utf-8")
    assert error_of(path).startswith(f"{path}: line ")


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", "training.batch_size"])
def test_malformed_overrides(text):
    with pytest.raises(NlpkitError, match=r"malformed override"):
        apply_overrides({}, [text])


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(NlpkitError, match=r"'task' is .* not a section"):
        apply_overrides({"task": "classification"}, ["task.name=x"])


def test_monitor_mode_follows_the_direction_the_task_declares(sentiment_recipe, tmp_path, monkeypatch):
    (tmp_path / "toy_errors.py").write_text(
        "from dataclasses import dataclass\nimport nlpkit\nfrom nlpkit.tasks import Task\n\n"
        "class Errors(Task):\n    name = 'errors'\n    metric_names = ('mae', 'r2')\n    lower_is_better = ('mae',)\n\n"
        "@nlpkit.hookimpl\ndef nlpkit_register_tasks():\n    return [Errors]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from nlpkit.plugins import load_plugins

    registries = load_plugins(plugins=["toy_errors"]).registries
    sentiment_recipe["task"] = "errors"
    modes = {monitor: load_recipe(sentiment_recipe, [f"training.monitor={monitor}"], registries).training.monitor_mode
             for monitor in ("val_loss", "val_mae", "val_r2")}
    assert modes == {"val_loss": "min", "val_mae": "min", "val_r2": "max"}

"""Every class of bad input a user meets gets exit code 2 and one stderr line naming what to fix.

Data files, recipes, checkpoint folders, run folders and command-line values.
Most cases run in-process through ``nlpkit.cli.main(argv)``; a few go through
the console script, where whatever a library prints to the real stderr
(``datasets``' own error logs, Lightning's banners) would show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import nlpkit
from nlpkit.backbones import BackboneConfig, build_backbone
from nlpkit.backbones.checkpoints import save_pretrained
from nlpkit.cli import main
from nlpkit.tokenization import Tokenizer
from tests.helpers import RunsCodeWhenUnpickled, sentiment_rows, tiny_recipe, write_csv

NLPKIT = str(Path(sys.executable).parent / "nlpkit")

# A BERT that nlpkit's BERT family writes and reads: a fine-tuned run of it can be exported.
BERT = BackboneConfig(kind="encoder", vocab_size=200, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48,
                      max_positions=64, type_vocab_size=2, norm_position="post", embedding_norm=True,
                      final_norm=False, norm_eps=1e-12)


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], *parts: str) -> str:
    """Run the CLI in-process and return its one stderr line, checking exit code 2 and each part."""
    code = main([str(arg) for arg in argv])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("nlpkit: error: "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("errors")
    write_csv(folder / "train.csv", sentiment_rows(80, 1))
    recipe = tiny_recipe(folder, data={"train": str(folder / "train.csv"), "validation": str(folder / "train.csv")},
                         training={"epochs": 1})
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


@pytest.fixture(scope="module")
def bert_folder(workspace: Path) -> Path:
    """A tiny pretrained BERT folder (nlpkit's own writer) with a WordPiece tokenizer beside it."""
    torch.manual_seed(0)
    folder = save_pretrained(build_backbone(BERT), workspace / "tiny-bert", family="bert")
    texts = [row["text"] for row in sentiment_rows(200, 3)]
    Tokenizer.train(texts, "wordpiece", vocab_size=200, min_frequency=1, max_length=32).save(folder)
    return folder


@pytest.fixture(scope="module")
def trained_run(workspace: Path, bert_folder: Path) -> Path:
    """A finished run fine-tuned from the tiny BERT (so it can be exported), with its checkpoints."""
    recipe = yaml.safe_load((workspace / "recipe.yaml").read_text())
    recipe["backbone"] = {"pretrained": str(bert_folder)}
    recipe["tokenizer"] = {"max_length": 32}
    return nlpkit.run(recipe).run_dir


def check(workspace: Path, *overrides: str) -> list[str]:
    return ["check", workspace / "recipe.yaml", *overrides]


# -- data files ---------------------------------------------------------------------------------------------------------

DATA_FILES = {
    # name: (file name, content (None: a folder), parts of the message)
    "broken JSON line": ("bad.jsonl", '{"text": "a b", "label": "pos"}\n{"text": "c", "label": \n{"text": "d"}\n',
                         ["bad.jsonl:2: not valid JSON"]),
    "a folder": ("folder.csv", None, ["data.train", "folder.csv' is a folder; expected a data file"]),
    "empty file": ("empty.csv", "", ["empty.csv: empty file"]),
    "header only": ("header.csv", "text,label\n", ["header.csv: a header row but no data rows"]),
    "invalid UTF-8": ("latin.csv", b"text,label\ngood film,pos\ncaf\xe9 noir,neg\n", ["latin.csv:3: not UTF-8 text (byte 0xe9)"]),
    "fake parquet": ("fake.parquet", "text,label\ngood,pos\n", ["fake.parquet: not a Parquet file"]),
    "ragged rows": ("ragged.csv", "text,label\ngood,pos\nbad,neg,extra\nfine,pos\n",
                    ["ragged.csv:3: 3 fields, but the header has 2"]),
    "JSON line that is no object": ("list.jsonl", '{"text": "a", "label": "pos"}\n[1, 2]\n', ["list.jsonl:2: expected a JSON object"]),
}


@pytest.mark.parametrize("name", DATA_FILES)
def test_a_bad_data_file_is_one_line_naming_file_and_line(name, workspace, capsys):
    file_name, content, parts = DATA_FILES[name]
    path = workspace / "data" / file_name
    path.parent.mkdir(exist_ok=True)
    if content is None:
        path.mkdir(exist_ok=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    one_error_line(capsys, check(workspace, f"data.train={path}"), *parts)


def test_datasets_prints_nothing_before_nlpkits_line(workspace):
    # Through the console script: `datasets` logs a failed read on the real stderr before raising.
    path = workspace / "data" / "ragged-cli.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("text,label\ngood,pos\nbad,neg,extra\n")
    result = subprocess.run([NLPKIT, "check", str(workspace / "recipe.yaml"), f"data.train={path}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"nlpkit: error: {path}:3: 3 fields, but the header has 2 (','-separated)"]


def test_a_text_column_of_numbers_is_read_as_text(workspace, capsys):
    path = workspace / "numbers.csv"
    path.write_text("text,label\n" + "".join(f"{n},{'odd' if n % 2 else 'even'}\n" for n in range(40)))
    recipe = yaml.safe_load((workspace / "recipe.yaml").read_text())
    recipe["data"] = {"train": str(path), "validation": str(path)}
    result = nlpkit.run(recipe)
    answer = nlpkit.load(result.run_dir).predict("17")
    assert answer["label"] in ("odd", "even")
    assert nlpkit.load(result.run_dir).evaluate(path)["accuracy"] >= 0.0  # the evaluation file is read as text too


# -- recipes ------------------------------------------------------------------------------------------------------------


def test_a_yaml_bomb_is_refused_before_it_expands(workspace, capsys):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 values expanded
    text = yaml.safe_dump(yaml.safe_load((workspace / "recipe.yaml").read_text()))
    bomb = workspace / "bomb.yaml"
    bomb.write_text(text + "trainer:\n  callbacks_note:\n" + "".join(f"    {line}\n" for line in levels))
    one_error_line(capsys, ["check", bomb], str(bomb), "aliases are expanded")


def test_very_deep_nesting_is_refused(workspace, capsys):
    deep = workspace / "deep.yaml"
    deep.write_text("task: classification\ndata: {options: {x: " + "[" * 5000 + "]" * 5000 + "}}\n")
    one_error_line(capsys, ["check", deep], str(deep), "line 2", "nested more than")


def test_an_override_value_is_bounded_too(workspace, capsys):
    one_error_line(capsys, check(workspace, "data.options.x=" + "[" * 100 + "]" * 100), "override 'data.options.x=", "nested")


def test_output_dir_that_is_a_file_or_inside_one(workspace, capsys):
    a_file = workspace / "a-file"
    a_file.write_text("not a folder")
    one_error_line(capsys, ["run", workspace / "recipe.yaml", f"output_dir={a_file}"], "output_dir", "a-file is a file")
    one_error_line(capsys, ["run", workspace / "recipe.yaml", f"output_dir={a_file / 'runs'}"],
                   "output_dir", f"lies inside {a_file}, which is a file")
    assert a_file.read_text() == "not a folder"


def test_output_dir_that_cannot_be_written(workspace, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: a filesystem that takes no new files
        where = Path("/proc/nlpkit-runs")
    else:
        locked = workspace / "locked"
        locked.mkdir(exist_ok=True)
        locked.chmod(0o555)
        where = locked / "runs"
    one_error_line(capsys, ["run", workspace / "recipe.yaml", f"output_dir={where}"], "output_dir", "cannot be written")
    assert not where.exists()


def test_a_section_for_another_task(workspace, capsys):
    one_error_line(capsys, check(workspace, "ner.scheme=iob2"), "the recipe's task is classification; `ner:` belongs to task ner")


# -- checkpoint folders -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_id", ["bert-base-uncased", "google-bert/bert-base-uncased"])
def test_a_hub_id_is_never_downloaded(hub_id, workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    one_error_line(capsys, check(workspace, "backbone.preset=null", "backbone.config={}", "tokenizer.train=null",
                                 f"backbone.pretrained={hub_id}"),
                   f"'{hub_id}' is not a local folder", "never downloads", "pass a local folder")


def test_a_config_that_disagrees_with_the_weights_names_tensor_and_shapes(bert_folder, workspace, capsys):
    folder = workspace / "wrong-config"
    shutil.copytree(bert_folder, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    one_error_line(capsys, ["generate", folder, "hello"],
                   "encoder.layer.0.intermediate.dense.weight", "(48, 32)", "(64, 32)")


def test_a_pickle_that_would_run_code_is_refused_in_nlpkits_words(bert_folder, workspace, capsys):
    folder = workspace / "evil-bert"
    shutil.copytree(bert_folder, folder, dirs_exist_ok=True)
    (folder / "model.safetensors").unlink()
    torch.save({"weight": RunsCodeWhenUnpickled(workspace / "pwned")}, folder / "pytorch_model.bin")
    line = one_error_line(capsys, ["generate", folder, "hello"],
                          "pytorch_model.bin: not a safe checkpoint: it would load posix.system")
    assert "weights_only" not in line and "\x1b" not in line  # none of torch's advice to load it unsafely
    assert not (workspace / "pwned").exists()


# -- run folders --------------------------------------------------------------------------------------------------------


def broken_copy(trained_run: Path, workspace: Path, name: str, file: str, content: str) -> Path:
    folder = workspace / name
    shutil.copytree(trained_run, folder, dirs_exist_ok=True)
    (folder / file).write_text(content)
    return folder


def test_an_invalid_run_json_or_recipe_is_named(trained_run, workspace, capsys):
    bad_json = broken_copy(trained_run, workspace, "bad-json", "run.json", '{"format_version": 1,')
    one_error_line(capsys, ["predict", bad_json, "good film"], f"{bad_json / 'run.json'}: not valid JSON")
    bad_yaml = broken_copy(trained_run, workspace, "bad-yaml", "recipe.yaml", "task: [classification\n")
    one_error_line(capsys, ["predict", bad_yaml, "good film"], f"{bad_yaml / 'recipe.yaml'}: line 2: invalid YAML")
    one_error_line(capsys, ["run", workspace / "recipe.yaml", "--resume", bad_yaml], f"{bad_yaml / 'recipe.yaml'}")


def test_a_wrong_field_in_predict_input_names_file_line_and_fields(trained_run, workspace, capsys):
    rows = workspace / "rows.jsonl"
    rows.write_text('{"text": "good film"}\n\n{"txt": "bad film", "id": 3}\n')
    one_error_line(capsys, ["predict", trained_run, "--input", rows],
                   f"{rows}:3: missing field 'text'", "fields found: txt, id", "expected: text, text_pair")


def test_resume_with_another_task_says_the_task_differs(trained_run, workspace, capsys):
    one_error_line(capsys, ["run", workspace / "recipe.yaml", "task=ner", "--resume", trained_run],
                   "is a run of task 'classification', but the recipe's task is 'ner'")


# -- command-line values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, parts", [
    (["predict", "RUN", "good film", "--batch-size", "0"], ["argument --batch-size: expected an integer >= 1, got 0"]),
    (["evaluate", "RUN", "--data", "x.csv", "--batch-size", "many"], ["argument --batch-size", "'many'"]),
    (["generate", "RUN", "hi", "--num-beams", "abc"], ["argument --num-beams: invalid int value: 'abc'"]),
    (["generate", "RUN", "hi", "--temperature", "hot"], ["argument --temperature: invalid float value: 'hot'"]),
    (["predict"], ["the following arguments are required: run_dir"]),
])
def test_a_bad_option_value_is_one_line_not_the_usage(argv, parts, trained_run, capsys):
    one_error_line(capsys, [trained_run if arg == "RUN" else arg for arg in argv], *parts)


def test_export_refuses_a_file_or_a_folder_that_holds_a_model(trained_run, workspace, capsys):
    a_file = workspace / "export-here.txt"
    a_file.write_text("mine")
    one_error_line(capsys, ["export", trained_run, a_file], "export-here.txt is a file")
    assert a_file.read_text() == "mine"

    out = workspace / "exported"
    assert main(["export", str(trained_run), str(out)]) == 0
    capsys.readouterr()
    plain = workspace / "plain-file"
    plain.write_text("as open makes it")
    assert {path.stat().st_mode for path in out.iterdir()} == {plain.stat().st_mode}  # safetensors' 0600 too
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    (out / "README.md").write_text("my notes")
    one_error_line(capsys, ["export", trained_run, out], "already holds a model", "--overwrite")
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != "README.md"} == before

    (out / "pytorch_model.bin").write_bytes(b"stale weights of another model")
    assert main(["export", str(trained_run), str(out), "--overwrite"]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted([*before, "README.md"])  # the stale .bin is gone
    assert (out / "README.md").read_text() == "my notes"


def test_a_failed_export_leaves_nothing(workspace, capsys):
    # A from-scratch pre-norm encoder: no Hugging Face family can express it.
    recipe = yaml.safe_load((workspace / "recipe.yaml").read_text())
    run_dir = nlpkit.run(recipe).run_dir
    out = workspace / "not-exported"
    one_error_line(capsys, ["export", run_dir, out], "no checkpoint family can express")
    assert not out.exists()
    assert not [path for path in workspace.iterdir() if path.name.startswith(".not-exported")]


# -- the console script -------------------------------------------------------------------------------------------------


def test_the_console_script_prints_one_line_for_a_bad_value(trained_run):
    result = subprocess.run([NLPKIT, "translate", str(trained_run), "hi", "--batch-size", "-3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "nlpkit: error: argument --batch-size: expected an integer >= 1, got -3 (see: nlpkit translate --help)"]

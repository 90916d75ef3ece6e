"""The ``nlpkit`` command as a user meets it: verbs, output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nlpkit
from nlpkit.cli import main
from tests.helpers import sentiment_rows, tiny_recipe, write_csv

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def nlpkit_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    return subprocess.run([str(Path(sys.executable).parent / "nlpkit"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("trained")
    data = {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(240, 1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(60, 2))),
    }
    return nlpkit.run(tiny_recipe(tmp_path, data=data)).run_dir


def _user_error_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (command arguments, parts the one stderr line must contain)."""
    train = write_csv(tmp / "train.csv", sentiment_rows(40, 1))
    unseen = write_csv(tmp / "unseen.csv", sentiment_rows(5, 2) + [{"text": "the plot", "label": "meh"}])
    recipe = tiny_recipe(tmp, data={"train": str(train), "validation": str(train)})
    good = tmp / "good.yaml"
    good.write_text(yaml.safe_dump(recipe))
    evil = tmp / "evil.yaml"
    evil.write_text('task: !!python/object/apply:os.system ["echo pwned"]\n')
    return {
        "unknown task": (["run", str(good), "task=sentiment"], ["unknown task 'sentiment'", "known: classification"]),
        "unknown preset": (["run", str(good), "backbone.preset=bert-tiny"], ["unknown preset 'bert-tiny'", "encoder-tiny"]),
        "misspelled key": (["run", str(good), "training.epoch=2"], ["training.epoch", "did you mean 'epochs'"]),
        "wrong type": (["run", str(good), "training.epochs=two"], ["training.epochs", "expected an integer"]),
        "missing data file": (["run", str(good), "data.validation=nowhere.csv"], ["data.validation", "nowhere.csv", "does not exist"]),
        "missing column": (["run", str(good), "data.columns.text=review"], ["missing column 'review'", "found: text, label"]),
        "unseen validation label": (["run", str(good), f"data.validation={unseen}"], ["data.validation", "row 6", "label 'meh' never seen in training"]),
        "malformed override": (["run", str(good), "training.epochs"], ["malformed override 'training.epochs'", "key.sub=value"]),
        "python tag": (["run", str(evil)], [str(evil), "python"]),
        "recipe does not exist": (["run", str(tmp / "nope.yaml")], ["recipe file", "nope.yaml", "does not exist"]),
        "check finds the same errors": (["check", str(good), "data.columns.label=stars"], ["missing column 'stars'"]),
    }


ERROR_NAMES = [
    "unknown task", "unknown preset", "misspelled key", "wrong type", "missing data file", "missing column",
    "unseen validation label", "malformed override", "python tag", "recipe does not exist", "check finds the same errors",
]


# Through the console script, as a user meets them; the rest in-process (the same `main`, seconds faster).
CONSOLE_SCRIPT_CASES = {"python tag", "unseen validation label"}


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_user_errors_are_one_line_with_exit_code_2(name, tmp_path, capsys, monkeypatch):
    args, parts = _user_error_cases(tmp_path)[name]
    if name in CONSOLE_SCRIPT_CASES:
        result = nlpkit_command(*args, cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code, stderr = main(args), capsys.readouterr().err
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nlpkit: error: ")
    assert "Traceback" not in stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_check_prints_a_summary_without_training(tmp_path):
    result = nlpkit_command("check", str(QUICKSTART), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "business, science, sports, world" in result.stdout
    assert "train 3000 rows" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_predict_texts_and_jsonl(trained_run, tmp_path, capsys):
    assert main(["predict", str(trained_run), "a lovely warm film", "a grim cruel story"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["label"] for a in answers] == ["pos", "neg"]

    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"a happy day"\n{"text": "a nasty dull plot"}\n')
    assert main(["predict", str(trained_run), "--input", str(inputs)]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["label"] for a in answers] == ["pos", "neg"]


def test_predict_errors(trained_run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"fine"\n{not json\n')
    assert main(["predict", str(trained_run), "--input", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "text"]) == 2
    assert "not an nlpkit run folder" in capsys.readouterr().err


def test_evaluate_prints_metrics(trained_run, tmp_path, capsys):
    data = write_csv(tmp_path / "eval.csv", sentiment_rows(40, 9))
    assert main(["evaluate", str(trained_run), "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"loss", "accuracy", "macro_f1"}
    assert metrics["accuracy"] >= 0.8

    unseen = write_csv(tmp_path / "unseen.csv", [{"text": "the film", "label": "meh"}])
    assert main(["evaluate", str(trained_run), "--data", str(unseen)]) == 2
    assert "label 'meh' never seen in training" in capsys.readouterr().err


def test_output_into_a_reader_that_stopped_ends_without_a_traceback(trained_run):
    # As `nlpkit runs --json | head` when head has read its lines: the pipe's reader is gone before nlpkit writes.
    runs = subprocess.Popen([str(Path(sys.executable).parent / "nlpkit"), "runs", str(trained_run.parent), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs.stdout.close()
    stderr = runs.communicate(timeout=120)[1]
    assert runs.returncode == 141, stderr  # 128 + SIGPIPE, as a shell reports a writer the pipe ended
    assert stderr == ""


def test_run_verbs_on_a_pretrained_folder_say_what_is_needed(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["predict", str(tmp_path), "text"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a pretrained folder, not a run folder: predict needs a trained run" in err
